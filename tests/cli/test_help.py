"""`--help` of every `quartet` command and every role prints its flags and exits 0 (a single
'%' in one field's docstring once made `quartet ppo --help` raise TypeError)."""

from __future__ import annotations

import pytest

from quartet.cli.main import FORWARDED, main
from quartet.roles import ROLES


@pytest.mark.parametrize("argv", [[name, "--help"] for name in FORWARDED]
                         + [["serve", role, "--help"] for role in ROLES])
def test_help_prints_usage_and_exits_0(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's --help exits
        code = exc.code
    out = capsys.readouterr().out
    assert code in (0, None), out[-2000:]
    assert "usage" in out.lower() and "--" in out
