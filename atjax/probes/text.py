"""The paper's text manipulations (NV, clause swap, before<->after, as<->then) under the
name the language probes use; they live in atjax.text_edits, which the training input
shares."""

from atjax.text_edits import *  # noqa: F401,F403
from atjax.text_edits import __all__  # noqa: F401
