"""The settings' documentation is the comments beside the fields in rib_ext/config.py, and
``--help`` shows it."""
from dataclasses import dataclass

from rib_ext.config_fields import field_docs, setting


@dataclass
class _Documented:
    # -- a group of fields (not one field's)
    # The first line above,
    # and the second.
    a: int = setting(1, ">= 0")
    b: str = "x"  # the comment at its end; "# inside a string" is not one
    c: float = 0.5

    # Lines apart still belong to the field below them.
    d: tuple = (1,
                2)  # on its continuation line


def test_field_docs_are_the_comments_beside_each_field():
    docs = field_docs(_Documented)
    assert docs["a"] == "The first line above, and the second."
    assert docs["b"] == 'the comment at its end; "# inside a string" is not one'
    assert "c" not in docs
    assert docs["d"] == "Lines apart still belong to the field below them. on its continuation line"


def test_help_shows_each_settings_documentation(capsys):
    import pytest

    from rib_ext.stages.options import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--rib.lr LR, --rib-lr LR Lambda, of the backbone (stages 3-4)" in text
    assert "--irn.exp_times EXP_TIMES the walk takes 2 ** exp_times steps" in text
