"""gateway/api/ui.py without a browser: which files it serves, and a package without them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.api.ui import FILES_DIR, MissingUiFiles, load_files


def test_the_package_holds_the_ui_files_and_only_known_types_are_served() -> None:
    files = load_files()
    assert {"index.html", "app.js", "api.js", "dom.js", "style.css"} <= set(files)
    assert files["app.js"].media_type.startswith("text/javascript")
    assert all(not name.endswith(".py") for name in files)
    assert FILES_DIR.name == "ui"


def test_a_directory_without_index_html_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "app.js").write_text("export {};\n")
    (tmp_path / "notes.txt").write_text("not served\n")
    with pytest.raises(MissingUiFiles, match="index.html is missing"):
        load_files(tmp_path)
    with pytest.raises(MissingUiFiles):
        load_files(tmp_path / "absent")


def test_equal_files_get_equal_etags_and_changed_ones_new_etags(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html>\n")
    first = load_files(tmp_path)["index.html"].etag
    assert load_files(tmp_path)["index.html"].etag == first
    (tmp_path / "index.html").write_text("<!doctype html><title>new</title>\n")
    assert load_files(tmp_path)["index.html"].etag != first
