# nbval compares stored outputs; stderr carries warnings and progress bars that vary by machine.
def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
