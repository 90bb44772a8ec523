"""Static snapshots of Jupyter widgets, drawn from the widget state a notebook stores.

`jupyter execute` (and so `make book`) saves every widget's last state in the notebook's metadata. A page
of the book has no kernel, so instead of loading a widget manager from the web we draw each widget once, as
HTML, from that state: sliders at their stored value, the text in a text box, the chart an `interact` drew.
Nothing here runs JavaScript; the widgets look live but do not respond (JupyterLab is where they move).
"""
import html, json

VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"


def widget_state(nb) -> dict:
    "model id -> {'model_name', 'state'} from a notebook's metadata (empty if it stores none)."
    w = nb.get("metadata", {}).get("widgets", {}).get(STATE, {})
    return w.get("state", {})


def _ref(v):
    return v[len("IPY_MODEL_"):] if isinstance(v, str) and v.startswith("IPY_MODEL_") else v


def _e(s) -> str:
    return html.escape("" if s is None else str(s))


def _label(s: dict) -> str:
    d = s.get("description") or ""
    return f'<label class="w-label">{_e(d)}</label>' if d else ""


def _placeholder(s: dict) -> str:
    "The grey hint an empty text box shows (ipywidgets stores a zero-width space when there is none)."
    p = (s.get("placeholder") or "").strip("\u200b")
    return f' placeholder="{_e(p)}"' if p else ""


def _number(v, s: dict) -> str:
    fmt = s.get("readout_format") or ("d" if isinstance(v, int) else ".2f")
    try:
        return format(v, fmt.lstrip("{:").rstrip("}"))
    except (ValueError, TypeError):
        return _e(v)


def _outputs_html(outputs) -> str:
    "The outputs an Output widget captured (stream text, images, HTML), drawn without a kernel."
    parts = []
    for o in outputs or []:
        if o.get("output_type") == "stream":
            parts.append(f'<pre class="w-stream">{_e(o.get("text", ""))}</pre>')
            continue
        data = o.get("data", {})
        if "image/png" in data:
            png = data["image/png"]
            png = "".join(png) if isinstance(png, list) else png
            parts.append(f'<img src="data:image/png;base64,{png.strip()}">')
        elif "text/html" in data:
            h = data["text/html"]
            parts.append("".join(h) if isinstance(h, list) else h)
        elif "text/plain" in data:
            t = data["text/plain"]
            parts.append(f'<pre>{_e("".join(t) if isinstance(t, list) else t)}</pre>')
    return "".join(parts)


def render(model_id: str, state: dict, depth: int = 0) -> str:
    "HTML for one widget and its children, from the stored state; unknown widgets show their name."
    m = state.get(_ref(model_id))
    if m is None or depth > 20:
        return '<span class="w-missing">(widget state not stored: run the notebook)</span>'
    name, s = m.get("model_name", ""), m.get("state", {})
    kind = name[:-len("Model")] if name.endswith("Model") else name
    classes = " ".join(s.get("_dom_classes", []))
    if kind in ("VBox", "HBox", "Box", "GridBox"):
        inner = "".join(render(c, state, depth + 1) for c in s.get("children", []))
        return f'<div class="w-{kind.lower()} {_e(classes)}">{inner}</div>'
    if kind in ("HTML", "HTMLMath"):
        return f'<div class="w-row">{_label(s)}<div class="w-html">{s.get("value", "")}</div></div>'
    if kind == "Label":
        return f'<div class="w-row"><span class="w-text">{_e(s.get("value"))}</span></div>'
    if kind == "Textarea":
        rows = s.get("rows") or 3
        return (f'<div class="w-row">{_label(s)}<textarea class="w-textarea" rows="{_e(rows)}"{_placeholder(s)} readonly>'
                f'{_e(s.get("value"))}</textarea></div>')
    if kind in ("Text", "IntText", "FloatText", "BoundedIntText", "BoundedFloatText"):
        return (f'<div class="w-row">{_label(s)}<input class="w-input" type="text"{_placeholder(s)} readonly '
                f'value="{_e(s.get("value"))}"></div>')
    if kind == "Button":
        return f'<div class="w-row"><button class="w-button" type="button">{_e(s.get("description"))}</button></div>'
    if kind in ("IntSlider", "FloatSlider", "FloatLogSlider"):
        v = s.get("value", 0)
        return (f'<div class="w-row">{_label(s)}<input class="w-slider" type="range" min="{_e(s.get("min", 0))}" '
                f'max="{_e(s.get("max", 100))}" step="{_e(s.get("step", 1))}" value="{_e(v)}" '
                f'aria-label="{_e(s.get("description"))}"><span class="w-readout">{_number(v, s)}</span></div>')
    if kind in ("Dropdown", "Select"):
        labels, idx = s.get("_options_labels", []), s.get("index")
        opts = "".join(f'<option{" selected" if i == idx else ""}>{_e(l)}</option>' for i, l in enumerate(labels))
        return f'<div class="w-row">{_label(s)}<select class="w-select">{opts}</select></div>'
    if kind in ("ToggleButtons", "RadioButtons"):
        labels, idx = s.get("_options_labels", []), s.get("index")
        btns = "".join(f'<span class="w-toggle{" w-on" if i == idx else ""}">{_e(l)}</span>' for i, l in enumerate(labels))
        return f'<div class="w-row">{_label(s)}<span class="w-toggles">{btns}</span></div>'
    if kind in ("Checkbox", "ToggleButton"):
        on = " checked" if s.get("value") else ""
        return f'<div class="w-row"><label class="w-label"><input type="checkbox"{on}> {_e(s.get("description"))}</label></div>'
    if kind in ("FloatProgress", "IntProgress"):
        lo, hi, v = s.get("min", 0), s.get("max", 100), s.get("value", 0)
        return (f'<div class="w-row">{_label(s)}<progress class="w-progress" max="{_e(hi - lo)}" '
                f'value="{_e(v - lo)}"></progress></div>')
    if kind == "Output":
        return f'<div class="w-output">{_outputs_html(s.get("outputs"))}</div>'
    return f'<span class="w-missing">({_e(kind)} widget)</span>'


def snapshot_outputs(nb) -> int:
    """Replace every widget view among nb's outputs by a static HTML snapshot (in place); drop the stored state
    so that no widget manager is asked for. Returns how many widgets were drawn."""
    state, n = widget_state(nb), 0
    for cell in nb.get("cells", []):
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if VIEW not in data:
                continue
            view = data[VIEW]
            view = json.loads(view) if isinstance(view, str) else view
            try:
                body = render(view.get("model_id", ""), state)
            except (TypeError, ValueError, AttributeError, KeyError):   # a state ipywidgets would not have written
                body = '<span class="w-missing">(widget state unreadable: run the notebook)</span>'
            o["data"] = {"text/html": f'<div class="w-snapshot" data-model-id="{_e(view.get("model_id"))}">{body}</div>'}
            n += 1
    nb.get("metadata", {}).pop("widgets", None)
    return n
