"""Write .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed
inlined, so `dvc plots show` and `dvc plots diff` draw without a network (DVC's own page
loads them from a CDN). .dvc/config names it (`plots.html_template`).

    npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0   # in an empty folder
    python scripts/dvc_plots_template.py FOLDER                # FOLDER holds the three .tgz
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

PACKAGES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}
TARGET = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"


def script(folder: Path, name: str, version: str) -> str:
    with tarfile.open(folder / f"{name}-{version}.tgz") as tar:
        code = tar.extractfile(f"package/build/{name}.min.js").read().decode()
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        assert placeholder not in code, f"{name} contains {placeholder}"
    return f"<script>/* {name} {version}, BSD-3-Clause, (c) University of Washington Interactive Data Lab */\n{code}\n</script>"


def main() -> None:
    folder = Path(sys.argv[1])
    scripts = "\n".join(script(folder, name, version) for name, version in PACKAGES.items())
    with tarfile.open(folder / f"vega-lite-{PACKAGES['vega-lite']}.tgz") as tar:
        license_text = tar.extractfile("package/LICENSE").read().decode()  # the same BSD-3 text for all three
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(f"""<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{{refresh_tag}}
<title>DVC plots (offline)</title>
<!-- vega, vega-lite and vega-embed:
{license_text}-->
{scripts}
<style>table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
""")


if __name__ == "__main__":
    main()
