"""`dvc plots show` pages that render without a network.

DVC's page loads vega, vega-lite and vega-embed from a CDN (jsdelivr), so offline it shows
nothing. `offline_template()` writes an HTML template with the same versions DVC asks for
inlined, fetched once as pinned npm files through the source resolver (mirror, cache, then
the npm registry); `dvc plots show --html-template "$(polyalign plots-template)"` then gives a
self-contained page. The template has no `{scripts}` placeholder, so DVC's CDN tags are left out.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import io
from pipeline.packs import NpmSource

# the versions dvc-render 1.0.2 loads from its CDN (dvc_render/vega.py)
VEGA = [
    NpmSource(kind="npm", package="vega", version="5.20.2", path="build/vega.min.js",
              sha256="4794d0169cb1f3ebad8117fe98ba5bd652dd725905ec0384e832391dbccb03be"),
    NpmSource(kind="npm", package="vega-lite", version="5.2.0", path="build/vega-lite.min.js",
              sha256="d73157451b3978015ab31dacd55ff90d986ab8663fc0abed50f97b3cd90002cb"),
    NpmSource(kind="npm", package="vega-embed", version="6.18.2", path="build/vega-embed.min.js",
              sha256="1ba9826431ddc9805e815ad92acc811c819f2bfd32bda2a128b8c4b5070fab5e"),
]

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <title>DVC Plot</title>
    <meta charset="utf-8">
{inline}
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>"""


def offline_template() -> Path:
    """<cache>/dvc_plots/template.html: DVC's page with vega, vega-lite and vega-embed inlined."""
    from pipeline.paths import cache_dir
    from pipeline.sources import resolve

    path = cache_dir() / "dvc_plots" / "template.html"
    if not path.exists():
        scripts = "\n".join(f"<script>{resolve(spec, origin='pipeline/plots.py').read_text(encoding='utf-8')}</script>"
                            for spec in VEGA)
        io.write_text(path, PAGE.replace("{inline}", scripts))
    return path
