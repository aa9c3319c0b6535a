"""{{name}}: a tollgate policy. Bearer tokens are known by their SHA-256 digests, listed in the
manifest's `[config] tokens`, one per line: `<sha256 hex of the token> <username> [group...]`.
A listed token is its user; any other token is left to the next plugin (abstain).
"""

import re

# The bindings componentize-py generates from wit/policy.wit (the world `policy`).
from wit_world import exports
from wit_world.imports import crypto, host
from wit_world.imports.types import (
    Decision,
    Decision_Abstain,
    Decision_Allow,
    Grant,
    Review,
    UserInfo,
)

# The host hashes at most 1 MiB in one call, and traps beyond it.
MAX_HASH_INPUT = 1 << 20
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Authenticator(exports.Authenticator):
    def authenticate(self, review: Review) -> Decision:
        token = review.token.encode()
        if not token or len(token) > MAX_HASH_INPUT:
            return Decision_Abstain()
        # The host hashes and compares: native speed, and in constant time.
        digest = crypto.sha256(token).hex().encode()
        found = None
        # Every line is compared, found or not: the time taken does not tell which line matched.
        for line in (host.config("tokens") or "").split("\n"):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue  # blank, or a comment
            if len(fields) < 2 or not SHA256_HEX.fullmatch(fields[0]):
                continue  # malformed: skipped
            if crypto.constant_time_eq(fields[0].lower().encode(), digest) and found is None:
                found = UserInfo(username=fields[1], uid="", groups=fields[2:], extra=[])
        if found is None:
            return Decision_Abstain()
        # Valid for the audiences the review names (the host intersects them with those anyway).
        return Decision_Allow(Grant(user=found, audiences=review.audiences, expires_at=None))
