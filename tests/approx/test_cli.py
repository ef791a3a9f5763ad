"""``hecnn approx`` commands."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

import hecnn.cli.approx  # noqa: F401  (registers the command group)
from hecnn.approx.composite import composite_sign
from hecnn.approx.remez import eval_power
from hecnn.cli.main import app

runner = CliRunner()


def test_coeffs_json_evaluates_like_the_library() -> None:
    res = runner.invoke(app, ["approx", "coeffs", "--alpha", "10", "--json"])
    assert res.exit_code == 0, res.output
    comps = json.loads(res.stdout)
    s = composite_sign(10)
    assert [len(c) - 1 for c in comps] == list(s.degrees)
    x = np.linspace(-1, 1, 2001)
    y = x.copy()
    for c in comps:  # applied first to last
        y = eval_power(c, y)
    np.testing.assert_array_equal(y, s.eval(x))
    relu = x * (1 + y) / 2
    assert np.max(np.abs(relu - np.maximum(x, 0))) <= 2.0**-10


def test_coeffs_text_and_table(tmp_path) -> None:
    res = runner.invoke(app, ["approx", "coeffs", "--alpha", "6"])
    assert res.exit_code == 0 and "degrees=(3, 7)" in res.stdout
    res = runner.invoke(app, ["approx", "table", "--alphas", "4,6", "--grid", "101"])
    assert res.exit_code == 0, res.output
    assert "-4.001" in res.stdout and "-6.001" in res.stdout
