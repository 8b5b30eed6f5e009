"""A kernel client that knows a kernel is ready as soon as its IOPub has caught up.

jupyter_client's ``wait_for_ready`` sends ``kernel_info``, waits for the reply and then drains IOPub
until nothing has arrived for 0.2 s: every new client pays those 0.2 s, and nbclient makes a new
client for every notebook. A pipeline step is a short notebook, so that wait was a third of a
step's overhead.

The wait is there because IOPub is a PUB/SUB pair: what the kernel publishes before the client's
subscription has reached it is lost. The client below asks for ``kernel_info`` and waits for the
``status: idle`` the kernel publishes on IOPub for that very request. Once it has arrived, the
subscription is in place and every later message will arrive, which is what the quiet period
guessed at. If it does not come within ``iopub_patience`` seconds, the request is sent again
(IOPub was not connected yet), as jupyter_client does.
"""

from __future__ import annotations

import time
from queue import Empty
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from traitlets import Float

CLIENT_CLASS = f"{__name__}.ReadyKernelClient"


class KernelStartFailed(RuntimeError):
    """The kernel died before it answered once: no cell ran, so the notebook may run in a new one.

    (jupyter_client picks the kernel's ports before the kernel binds them; another process can take
    one in between, and the kernel exits with "Address already in use".)
    """


class ReadyKernelClient(BlockingKernelClient):
    """A blocking client whose ``wait_for_ready`` ends when IOPub has delivered the kernel_info's idle."""

    iopub_patience = Float(0.5, help="How long to wait on IOPub for the kernel_info's idle before asking again.")

    def wait_for_ready(self, timeout: float | None = None) -> None:
        """Return once the kernel has answered ``kernel_info`` on shell and IOPub; raise if it died or timed out."""
        deadline = time.monotonic() + (float("inf") if timeout is None else timeout)
        while True:
            request = self.kernel_info()
            reply = self._reply_to(request, min(1.0, max(0.0, deadline - time.monotonic())))
            if reply is not None and self._idle_seen(request):
                self._handle_kernel_info_reply(reply)
                return
            if not self.is_alive():
                raise KernelStartFailed("Kernel died before replying to kernel_info")
            if time.monotonic() > deadline:
                raise RuntimeError(f"Kernel didn't respond in {timeout:.0f} seconds")

    def _reply_to(self, request: str, patience: float) -> dict[str, Any] | None:
        """The shell reply to ``request``, or None after ``patience`` seconds."""
        until = time.monotonic() + patience
        while (left := until - time.monotonic()) > 0:
            try:
                msg = self.shell_channel.get_msg(timeout=left)
            except Empty:
                return None
            if msg["parent_header"].get("msg_id") == request and msg["msg_type"] == "kernel_info_reply":
                return dict(msg)
        return None

    def _idle_seen(self, request: str) -> bool:
        """Whether IOPub delivers the idle status of ``request`` (earlier messages are dropped, as a flush would)."""
        until = time.monotonic() + self.iopub_patience
        while (left := until - time.monotonic()) > 0:
            try:
                msg = self.iopub_channel.get_msg(timeout=left)
            except Empty:
                return False
            if (msg["msg_type"] == "status" and msg["parent_header"].get("msg_id") == request
                    and msg["content"].get("execution_state") == "idle"):
                return True
        return False
