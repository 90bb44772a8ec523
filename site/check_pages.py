"""Read the built book as a reader's browser does: every page of a site folder loaded in headless Chromium from a
local HTTP server, with what went wrong on each page and screenshots of the pages named.

    python site/check_pages.py _site [--shots DIR] [--shoot 00_overview,10b_benchmark] [--width 1440]

Per page it prints: console errors, failed requests (and HTTP status >= 400), images drawn narrower than their
natural width, code lines wider than the code column (they wrap), the longest code line, any code cell that
still shows an nbdev `#|` directive, and page-wide horizontal scrolling. Exit status 1 if any page had a console
error, a failed request or a shown directive.

Needs Playwright and a Chromium, which the book itself does not: they are not in requirements.txt. For example
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    apt-get install -y chromium            # or: /tmp/pw/bin/playwright install chromium
    /tmp/pw/bin/python site/check_pages.py _site --chromium /usr/bin/chromium
"""
import argparse, json, socket, subprocess, sys, time
from pathlib import Path

MEASURE = r"""() => {
  const shrunk = [];
  for (const im of document.querySelectorAll('img')) {
    if (im.complete && !im.naturalWidth) shrunk.push([im.getAttribute('src').slice(-50), 'broken']);
    else if (im.naturalWidth && im.width < im.naturalWidth - 1) shrunk.push([im.getAttribute('src').slice(-50), im.width, im.naturalWidth]);
  }
  let longest = 0, wrapped = 0, directives = 0;
  for (const pre of document.querySelectorAll('.jp-InputArea-editor pre')) {
    const lines = pre.querySelectorAll('.code-line').length
      ? [...pre.querySelectorAll('.code-line')].map(l => l.textContent) : pre.textContent.split('\n');
    const probe = document.createElement('span'); probe.textContent = 'x'.repeat(100); probe.style.whiteSpace = 'pre';
    pre.appendChild(probe); const cw = probe.getBoundingClientRect().width / 100; probe.remove();
    const cols = Math.floor(pre.clientWidth / cw);
    for (const l of lines) { longest = Math.max(longest, l.length); if (l.length > cols) wrapped++; if (/^\s*#\|/.test(l)) directives++; }
  }
  const clipped = [];
  for (const el of document.querySelectorAll('main *')) {
    const ox = getComputedStyle(el).overflowX;
    if (['auto', 'scroll', 'hidden', 'clip'].includes(ox) && el.scrollWidth > el.clientWidth + 1 &&
        !el.closest('.MJX_Assistive_MathML')) clipped.push(String(el.className).slice(0, 60));
  }
  return {shrunk, longest, wrapped, directives, clipped,
          page_scrolls_sideways: document.documentElement.scrollWidth > window.innerWidth};
}"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--shots", type=Path, help="folder for screenshots (viewport and full page)")
    ap.add_argument("--shoot", default="", help="comma-separated page names (without .html) to screenshot")
    ap.add_argument("--width", type=int, default=1440, help="window width in CSS pixels (default 1440)")
    ap.add_argument("--chromium", help="a Chromium executable (default: Playwright's own)")
    a = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(a.site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shoot, report = set(filter(None, a.shoot.split(","))), {}
    try:
        time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            for page_file in sorted(a.site.glob("*.html")):
                ctx = browser.new_context(viewport={"width": a.width, "height": 900})
                page = ctx.new_page()
                errors, failed = [], []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
                page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
                page.on("response", lambda r: failed.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
                page.goto(f"http://127.0.0.1:{port}/{page_file.name}", wait_until="networkidle")
                page.wait_for_timeout(1000)                       # MathJax typesets after the load event
                report[page_file.name] = {"console_errors": errors, "failed_requests": failed, **page.evaluate(MEASURE)}
                if page_file.stem in shoot and a.shots:
                    a.shots.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(a.shots / f"{page_file.stem}.png"))
                    page.screenshot(path=str(a.shots / f"{page_file.stem}_full.png"), full_page=True)
                ctx.close()
            browser.close()
    finally:
        server.terminate()
    print(f"{'page':34s} errors failed shrunk longest wrapped directives")
    for name, r in report.items():
        print(f"{name:34s} {len(r['console_errors']):6d} {len(r['failed_requests']):6d} {len(r['shrunk']):6d} "
              f"{r['longest']:7d} {r['wrapped']:7d} {r['directives']:10d}"
              + ("  page scrolls sideways" if r["page_scrolls_sideways"] else "")
              + (f"  clipped: {r['clipped'][:3]}" if r["clipped"] else ""))
        for line in r["console_errors"] + r["failed_requests"]:
            print("   ", line[:200])
    if a.shots:
        (a.shots / "report.json").write_text(json.dumps(report, indent=1))
    bad = sum(len(r["console_errors"]) + len(r["failed_requests"]) + r["directives"] for r in report.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
