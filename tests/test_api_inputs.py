"""The Python API's inputs: what a caller may pass (a Path for a model, an int position) and the one clear error
for anything else (a FailtraceError, never a TypeError from deep inside)."""

from __future__ import annotations

from pathlib import Path

import pytest

from failtrace.models.fingerprint import model_fingerprint
from failtrace.models.loading import load_model
from failtrace_testkit.toy import save_toy_model

def test_a_model_folder_given_as_a_path_object_loads_as_its_string(tmp_path: Path) -> None:
    """load_model(pathlib.Path) was AttributeError ('PosixPath' has no 'strip'); a number is one clear error."""
    from failtrace.errors import FailtraceError

    folder = save_toy_model(tmp_path / "m", seed=0)
    by_path, by_text = load_model(Path(folder), progress=False), load_model(str(folder), progress=False)
    assert model_fingerprint(by_path) == model_fingerprint(by_text) and by_path.source == by_text.source
    with pytest.raises(FailtraceError, match="a model is named by a string or a path .*not int 5"):
        load_model(5)  # type: ignore[arg-type]


@pytest.mark.parametrize("position", [True, 1.5, "2"])
def test_a_position_that_is_no_token_index_is_refused(position: object) -> None:
    """attribute(position=True) explained token 1; 1.5 and "2" were TypeErrors from list slicing."""
    from failtrace.attribution.inputs import prepare_input
    from failtrace.errors import FailtraceError
    from failtrace_testkit.toy import toy_tokenizer

    tok = toy_tokenizer()
    assert len(prepare_input(tok, [5, 6, 7, 8], position=1).ids) == 2  # an int is a token index
    with pytest.raises(FailtraceError, match=r"position must be a whole number \(a token index\), got "):
        prepare_input(tok, [5, 6, 7, 8], position=position)  # type: ignore[arg-type]
