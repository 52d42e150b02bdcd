"""``stop_once``: the commands' SIGTERM handler acts on the first SIGTERM only."""
import os
import signal
import time

from convfm.signals import stop_once


def test_stop_once_calls_the_handler_for_the_first_sigterm_and_ignores_the_rest():
    calls, before = [], signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop_once(lambda signum, frame: calls.append(signum)))
    try:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert calls == [signal.SIGTERM] and signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
