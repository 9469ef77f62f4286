"""Logger names: ilit's modules and every plugin log under the "ilit" logger, so one handler and one level
on "ilit" cover them all."""

import logging

import pytest

from ilit.logs import ROOT, get_logger


@pytest.mark.parametrize("module, expected", [
    ("ilit", "ilit"),
    ("ilit.tuner", "ilit.tuner"),
    ("ilit.strategies.mse", "ilit.strategies.mse"),
    ("ilit_pytorch.adaptor", "ilit.ilit_pytorch.adaptor"),
    ("my_plugin", "ilit.my_plugin"),
    ("ilitx.adaptor", "ilit.ilitx.adaptor"),  # a prefix of the name is not enough to count as ilit's own
])
def test_get_logger_puts_every_module_under_ilit(module, expected):
    assert get_logger(module).name == expected
    assert get_logger(module) is logging.getLogger(expected)


def test_a_plugin_record_reaches_a_handler_on_ilit_and_obeys_its_level():
    seen = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.name, record.getMessage()))

    root = logging.getLogger(ROOT)
    handler, level = Keep(), root.level
    root.addHandler(handler)
    try:
        root.setLevel(logging.INFO)
        get_logger("ilit_toyish.adaptor").info("calibrated %d batches", 3)
        root.setLevel(logging.WARNING)
        get_logger("ilit_toyish.adaptor").info("not shown at WARNING")
        get_logger("ilit_toyish.adaptor").warning("shown")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert seen == [("ilit.ilit_toyish.adaptor", "calibrated 3 batches"), ("ilit.ilit_toyish.adaptor", "shown")]
