"""A ^C or SIGTERM whose exception something swallowed is still raised by the next check."""

import os
import signal

import pytest

from servegen_ml.core.interrupt import Terminated, raise_if_interrupted, terminate_as_interrupt


@pytest.mark.parametrize(("sig", "kind"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, Terminated)])
def test_a_swallowed_signal_is_raised_again_by_the_check(sig, kind):
    with terminate_as_interrupt():
        try:
            os.kill(os.getpid(), sig)
            signal.sigtimedwait([], 0.01)  # a bytecode boundary for the handler to run
        except BaseException:  # what a finalizer or a library does
            pass
        with pytest.raises(kind) as caught:
            raise_if_interrupted()
        assert type(caught.value) is kind
    raise_if_interrupted()  # nothing recorded outside the block
