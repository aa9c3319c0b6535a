"""A test plugin in Python whose behaviour `[config] action` picks: the sandbox tests run it to
show that a heavy runtime is held to the same deadline, memory cap and lack of authority as a
compiled guest, and the reuse tests to show what persists in a warm instance.

Actions: allow (username from config), count (a module-level counter: 1 in a fresh instance,
growing in a warm one), loop, oom, raise, file, env, socket.
"""

import os

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Decision, Decision_Allow, Decision_Deny, Grant, Review, UserInfo

CALLS = 0


def grant(username: str) -> Decision:
    user = UserInfo(username=username, uid="", groups=[], extra=[])
    return Decision_Allow(Grant(user=user, audiences=[], expires_at=None))


class Authenticator(exports.Authenticator):
    def authenticate(self, review: Review) -> Decision:
        global CALLS
        CALLS += 1
        action = host.config("action") or ""
        if action == "allow":
            return grant(host.config("username") or "")
        if action == "count":
            return grant(f"call-{CALLS}")
        if action == "loop":
            while True:
                pass
        if action == "oom":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if action == "raise":
            raise RuntimeError("probe raised on purpose")
        if action == "file":
            try:
                with open(host.config("path") or "/etc/passwd") as f:
                    f.read()
                return grant("read-a-file")
            except OSError as e:
                return Decision_Deny(f"file denied: {e}")
        if action == "env":
            names = [k for k in os.environ if k]
            if names:
                return grant(f"saw-{len(names)}-vars")
            return Decision_Deny("env denied: no variables")
        if action == "socket":
            host_, _, port = (host.config("addr") or "127.0.0.1:9").rpartition(":")
            try:
                import socket  # may itself be missing from the runtime: that is a denial too

                socket.create_connection((host_, int(port)), timeout=1).close()
                return grant("opened-a-socket")
            except Exception as e:  # noqa: BLE001 - any failure is the point
                return Decision_Deny(f"socket denied: {type(e).__name__}")
        raise RuntimeError(f"probe: unknown action {action!r}")
