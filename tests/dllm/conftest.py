"""The tiny dLLM as fixtures: (model, tokenizer) pairs of tests/tiny_model.py.

`tiny` and `peaked_tiny` are built once per module in eval mode, for tests that only read the model (a test
that touches its config or grads puts them back); `fresh_tiny` is built per test, in train mode, for tests
that train or change it.
"""

import pytest

from tests.tiny_model import PEAKED, build_tiny


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = build_tiny()
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def peaked_tiny():
    """The tiny model with initializer_range 0.3 (PEAKED), for decoding tests that compare argmaxes."""
    model, tokenizer = build_tiny(**PEAKED)
    return model.eval(), tokenizer


@pytest.fixture()
def fresh_tiny():
    return build_tiny()
