"""Sphinx configuration for the amphora_heartbeat documentation."""

from __future__ import annotations

import amphora_heartbeat

project = "amphora_heartbeat"
author = "amphora_heartbeat developers"
copyright = "2026, amphora_heartbeat developers"  # noqa: A001
version = release = amphora_heartbeat.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
nitpicky = False
intersphinx_mapping: dict[str, tuple[str, None]] = {}
html_theme = "furo"
html_title = f"amphora_heartbeat {release}"
