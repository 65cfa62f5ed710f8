"""Helpers of the grid and queue tests (the tiny project itself is conftest.tiny_project)."""

from __future__ import annotations

from conftest import GIT_IDENTITY, dvc, env_for, sh, tiny_project  # noqa: F401  (re-exported)

