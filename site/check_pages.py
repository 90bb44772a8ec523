"""Read the built book as a reader's browser does: every page of a site folder loaded in headless Chromium from a
local HTTP server, at a phone's width and a wide screen's, with what went wrong on each page and screenshots of
the pages named.

    python site/check_pages.py _site [--width 390,1920] [--shots DIR] [--shoot 00_overview,10b_benchmark]

Per page and window width it prints: console errors, failed requests (and HTTP status >= 400), links to a page or
an anchor that does not exist, images drawn narrower than their natural width, code lines that wrap (a line of a
code cell drawn on more than one row) and text blocks (<pre>) that wrap, code lines wider than their block (they
scroll inside it), the longest code line, how far down the page's title starts, any code cell that still shows an
nbdev `#|` directive, whether the page is wider than the window (it scrolls sideways), and anything whose content
is cut off (overflow: hidden or clip). Exit status 1 if any page, at any width, had a console error, a failed
request, a broken link, a shown directive, a wrapped code line or <pre>, cut-off content, a document wider than the
window, or a title below the first screen (on a phone: the table of contents must not come before it).

Needs Playwright and a Chromium, which the book itself does not: they are not in requirements.txt. For example
    python3 -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    apt-get install -y chromium            # or: /tmp/pw/bin/playwright install chromium
    /tmp/pw/bin/python site/check_pages.py _site --chromium /usr/bin/chromium
"""
import argparse, json, posixpath, socket, subprocess, sys, time
from pathlib import Path
from urllib.parse import unquote, urlsplit

MEASURE = r"""() => {
  const shrunk = [];
  for (const im of document.querySelectorAll('img')) {
    if (im.complete && !im.naturalWidth) shrunk.push([im.getAttribute('src').slice(-50), 'broken']);
    else if (im.naturalWidth && im.width < im.naturalWidth - 1) shrunk.push([im.getAttribute('src').slice(-50), im.width, im.naturalWidth]);
  }
  // A code line wraps when the browser draws it on more than one row: its block is taller than one line.
  let longest = 0, lines = 0, wrapped = 0, wider = 0, directives = 0;
  const wrapped_examples = [];
  for (const pre of document.querySelectorAll('.jp-InputArea-editor pre')) {
    const spans = [...pre.querySelectorAll('.code-line')];
    const rowHeight = parseFloat(getComputedStyle(pre).lineHeight) || 16;
    for (const l of spans) {
      const text = l.textContent; lines++;
      longest = Math.max(longest, text.length);
      if (/^\s*#\|/.test(text)) directives++;
      if (l.getBoundingClientRect().height > 1.5 * rowHeight) {
        wrapped++; if (wrapped_examples.length < 3) wrapped_examples.push(text.slice(0, 80));
      }
    }
    if (pre.scrollWidth > pre.clientWidth + 1)            // some line is wider than the block: it scrolls
      for (const l of spans) {
        const r = document.createRange(); r.selectNodeContents(l);
        if (r.getBoundingClientRect().width > pre.clientWidth + 1) wider++;
      }
    if (!spans.length) for (const t of pre.textContent.split('\n')) { lines++; longest = Math.max(longest, t.length); }
  }
  // Any other <pre> (outputs, code in prose, widget snapshots) wraps if it is taller when wrapping than when not.
  let wrapped_pre = 0;
  for (const pre of document.querySelectorAll('main pre')) {
    if (pre.closest('.jp-InputArea-editor') || !pre.getClientRects().length) continue;
    const h = pre.getBoundingClientRect().height, ws = pre.style.whiteSpace;
    pre.style.whiteSpace = 'pre';
    if (pre.getBoundingClientRect().height < h - 1) {
      wrapped_pre++; if (wrapped_examples.length < 3) wrapped_examples.push('<pre> ' + pre.textContent.slice(0, 74));
    }
    pre.style.whiteSpace = ws;
  }
  // Cut off: content wider than a box that hides it. A box that scrolls (auto, scroll) shows all of it.
  const clipped = []; let scrolling = 0;
  for (const el of document.querySelectorAll('main *')) {
    if (el.closest('.MJX_Assistive_MathML') || el.scrollWidth <= el.clientWidth + 1) continue;
    const ox = getComputedStyle(el).overflowX;
    if (['hidden', 'clip'].includes(ox)) clipped.push(el.tagName.toLowerCase() + '.' + String(el.className).slice(0, 60));
    else if (['auto', 'scroll'].includes(ox)) scrolling++;
  }
  const h1 = document.querySelector('main h1');
  const links = [...document.querySelectorAll('a[href]')].map(a => a.href);
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id)
      .concat([...document.querySelectorAll('a[name]')].map(e => e.name));
  return {shrunk, lines, longest, wrapped, wrapped_pre, wrapped_examples, wider, directives, clipped, scrolling,
          doc_width: document.documentElement.scrollWidth, window_width: window.innerWidth,
          window_height: window.innerHeight,
          title_top: h1 ? Math.round(h1.getBoundingClientRect().top + window.scrollY) : null, links, ids};
}"""


def broken_links(report: dict, base: str, site: Path) -> dict:
    """For each page (report: page name -> {'links': absolute URLs, 'ids': the ids on the page}), the links into
    the site that name a file that does not exist, or an anchor (#x) that the page it names does not have. base
    is the server's root URL; links elsewhere (http(s) to another host, mailto:) are not followed."""
    out = {}
    for name, r in report.items():
        bad = []
        for url in r["links"]:
            if not url.startswith(base):
                continue
            parts = urlsplit(url)
            path = posixpath.normpath(unquote(parts.path).lstrip("/")) or "index.html"
            if not (site / path).is_file():
                bad.append(f"{url[len(base):]} (no such file)")
            elif parts.fragment and path.endswith(".html"):
                ids = report.get(path, {}).get("ids")
                # as a browser does: the fragment as written, then percent-decoded (nbconvert's heading ids
                # keep their %C2%B7)
                if ids is not None and parts.fragment not in ids and unquote(parts.fragment) not in ids:
                    bad.append(f"{url[len(base):]} (no such anchor)")
        out[name] = sorted(set(bad))
    return out


def problems(r: dict) -> list[str]:
    "What is wrong with one page at one width (one entry of the report), as short phrases; [] if nothing."
    p = []
    for key, what in (("console_errors", "console errors"), ("failed_requests", "failed requests"),
                      ("broken_links", "broken links")):
        if r.get(key):
            p.append(f"{len(r[key])} {what}")
    if r["directives"]:
        p.append(f"{r['directives']} #| directives shown")
    if r["wrapped"]:
        p.append(f"{r['wrapped']} code lines wrap")
    if r["wrapped_pre"]:
        p.append(f"{r['wrapped_pre']} <pre> blocks wrap")
    if r["clipped"]:
        p.append(f"cut off: {r['clipped'][:3]}")
    if r["doc_width"] > r["window_width"]:
        p.append(f"page is {r['doc_width']} px wide in a {r['window_width']} px window")
    if r["title_top"] is None or r["title_top"] > r["window_height"] - 40:
        p.append(f"title at {r['title_top']} px, below the first screen")
    return p


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--shots", type=Path, help="folder for screenshots (first screen and top of the page)")
    ap.add_argument("--shoot", default="", help="comma-separated page names (without .html) to screenshot")
    ap.add_argument("--width", default="390,1920",
                    help="window widths in CSS pixels, comma-separated (default 390,1920: a phone, a wide screen)")
    ap.add_argument("--height", type=int, default=900, help="window height in CSS pixels (default 900)")
    ap.add_argument("--chromium", help="a Chromium executable (default: Playwright's own)")
    ap.add_argument("--pages", default="", help="comma-separated page names (without .html) to check (default: all)")
    a = ap.parse_args(argv)
    widths = [int(w) for w in a.width.split(",") if w.strip()]
    from playwright.sync_api import sync_playwright
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    base = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "-d", str(a.site)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shoot, only = set(filter(None, a.shoot.split(","))), set(filter(None, a.pages.split(",")))
    files = [f for f in sorted(a.site.glob("*.html")) if not only or f.stem in only]
    reports = {}
    try:
        time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=a.chromium, args=["--no-sandbox"])
            for width in widths:
                report = reports[width] = {}
                for page_file in files:
                    ctx = browser.new_context(viewport={"width": width, "height": a.height})
                    page = ctx.new_page()
                    errors, failed = [], []
                    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
                    page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})"))
                    page.on("response", lambda r: failed.append(f"{r.url} (HTTP {r.status})") if r.status >= 400 else None)
                    page.goto(base + page_file.name, wait_until="networkidle")
                    page.wait_for_timeout(1000)                   # MathJax typesets after the load event
                    report[page_file.name] = {"console_errors": errors, "failed_requests": failed,
                                              **page.evaluate(MEASURE)}
                    if page_file.stem in shoot and a.shots:
                        a.shots.mkdir(parents=True, exist_ok=True)
                        page.screenshot(path=str(a.shots / f"{page_file.stem}_{width}.png"))
                        # the top of the page, in a window six screens tall (Chromium's full-page shot of
                        # the longest pages takes minutes)
                        page.set_viewport_size({"width": width, "height": 6 * a.height})
                        page.wait_for_timeout(500)
                        page.screenshot(path=str(a.shots / f"{page_file.stem}_{width}_top.png"))
                    ctx.close()
            browser.close()
    finally:
        server.terminate()
    bad = 0
    for width, report in reports.items():
        for name, links in broken_links(report, base, a.site).items():
            report[name]["broken_links"] = links
        print(f"\nwindow {width} x {a.height} px")
        print(f"{'page':34s} errors failed links shrunk  lines longest wider wrapped  width title")
        for name, r in report.items():
            trouble = problems(r)
            bad += bool(trouble)
            print(f"{name:34s} {len(r['console_errors']):6d} {len(r['failed_requests']):6d} {len(r['broken_links']):5d} "
                  f"{len(r['shrunk']):6d} {r['lines']:6d} {r['longest']:7d} {r['wider']:5d} "
                  f"{r['wrapped'] + r['wrapped_pre']:7d} {r['doc_width']:6d} {r['title_top'] if r['title_top'] is not None else '-':>5}"
                  + (f"  <- {'; '.join(trouble)}" if trouble else ""))
            for line in r["console_errors"] + r["failed_requests"] + r["broken_links"] + r["wrapped_examples"]:
                print("   ", line[:200])
        total = lambda k: sum(r[k] for r in report.values())
        print(f"{len(report)} pages: {total('lines')} code lines, {total('wrapped')} wrap, {total('wider')} scroll "
              f"inside their block; {total('wrapped_pre')} other <pre> wrap; "
              f"{sum(r['doc_width'] > r['window_width'] for r in report.values())} pages wider than the window; "
              f"{sum(len(r['broken_links']) for r in report.values())} broken of {sum(len(r['links']) for r in report.values())} links")
    if a.shots:
        a.shots.mkdir(parents=True, exist_ok=True)
        slim = {w: {n: {k: v for k, v in r.items() if k not in ("links", "ids")} for n, r in rep.items()}
                for w, rep in reports.items()}
        (a.shots / "report.json").write_text(json.dumps(slim, indent=1))
    print(f"\n{bad} page views with a problem" if bad else "\nno problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
