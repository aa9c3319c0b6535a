"""static-tokens in Python: kube-apiserver's static token file, as SHA-256 digests of the tokens.

Same config and behaviour as plugins/static-tokens (Rust):
- `tokens`: one user per line, fields separated by whitespace, `#` starts a comment:
  `SHA256-HEX USERNAME [UID [GROUPS [EXTRA]]]`, GROUPS `g1,g2`, EXTRA `key=value,key=value`
  (a repeated key adds a value), `-` stands for an empty field.
- `audiences` (optional): comma-separated audiences every grant states.

An unlisted token gets `abstain`. A malformed line raises, which traps: the plugin fails closed
(and fails its vectors at load). The token is never logged. The hashing and the comparison are
the host's (`tollgate:policy/crypto`: tollgate_crypto.py).
"""

import re

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Decision,
    Decision_Abstain,
    Decision_Allow,
    Grant,
    Review,
    UserInfo,
)

from tollgate_crypto import constant_time_eq, sha256
from tollgate_text import content_lines, fields, split_list

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class MalformedLine(Exception):
    pass


def parse_line(line: str) -> tuple[bytes, Grant]:
    f = fields(line)
    if not 2 <= len(f) <= 5:
        raise MalformedLine(f"expected 2 to 5 fields, found {len(f)}")
    if not _HEX64.fullmatch(f[0]):
        raise MalformedLine("the first field must be 64 hex characters (a SHA-256 digest)")
    digest = bytes.fromhex(f[0])

    def field(i: int) -> str:
        return f[i] if i < len(f) and f[i] != "-" else ""

    extra: list[tuple[str, list[str]]] = []
    for pair in split_list(field(4)):
        key, eq, value = pair.partition("=")
        if not eq:
            raise MalformedLine(f"extra entry {pair!r} is not key=value")
        for k, values in extra:
            if k == key:
                values.append(value)
                break
        else:
            extra.append((key, [value]))
    user = UserInfo(username=f[1], uid=field(2), groups=split_list(field(3)), extra=extra)
    return digest, Grant(user=user, audiences=[], expires_at=None)


class Authenticator(exports.Authenticator):
    def authenticate(self, review: Review) -> Decision:
        table = host.config("tokens") or ""
        digest = sha256(review.token)
        found = None
        # Every line is parsed and compared, found or not: the time taken does not depend on
        # which line (if any) matches, and the host compares in constant time.
        for n, line in content_lines(table):
            try:
                entry_digest, grant = parse_line(line)
            except MalformedLine as e:
                raise RuntimeError(f"tokens line {n}: {e}") from None
            if constant_time_eq(entry_digest, digest) and found is None:
                found = grant
        if found is None:
            return Decision_Abstain()
        found.audiences = split_list(host.config("audiences") or "")
        return Decision_Allow(found)
