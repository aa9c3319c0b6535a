"""group-mapper in Python: rewrites the grant's groups (and optionally prefixes its username).

Same config and behaviour as plugins/group-mapper (Rust):
- `rules`: one rule per line, `FROM TO`, `#` starts a comment. `FROM` is a group name, or a
  prefix ending in `*`; a `*` in `TO` is replaced by what `FROM`'s `*` matched; `TO` = `-` drops
  the group. The first matching rule wins.
- `unmapped`: `keep` (default) or `drop`; `prefix`: prepended to kept unmapped groups;
  `add`: comma-separated groups added to every grant; `username_prefix`: prepended to the username.

Groups keep the order of first appearance, without duplicates. Without a current grant (not a
mapper) it abstains. A malformed rule raises, which traps: the plugin fails closed.
"""

from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import Decision, Decision_Abstain, Decision_Allow, Review

from tollgate_text import content_lines, fields, split_list


class Rule:
    def __init__(self, line: str):
        f = fields(line)
        if len(f) != 2:
            raise ValueError(f"expected `FROM TO`, found {len(f)} fields")
        frm, to = f
        self.wildcard = frm.endswith("*")
        if self.wildcard:
            frm = frm[:-1]
        if "*" in frm:
            raise ValueError("`*` may only end FROM")
        self.frm = frm
        self.to = None if to == "-" else to  # None drops the group

    def apply(self, group: str):
        """(matched, mapped group or None to drop)."""
        if self.wildcard:
            if not group.startswith(self.frm):
                return False, None
            rest = group[len(self.frm):]
        elif group == self.frm:
            rest = ""
        else:
            return False, None
        return True, (None if self.to is None else self.to.replace("*", rest, 1))


def parse_rules(text: str) -> list[Rule]:
    rules = []
    for n, line in content_lines(text):
        try:
            rules.append(Rule(line))
        except ValueError as e:
            raise RuntimeError(f"rules line {n}: {e}") from None
    return rules


class Authenticator(exports.Authenticator):
    def authenticate(self, review: Review) -> Decision:
        current = review.current
        if current is None:
            # Only a mapper has a current grant; as an authenticator it has no opinion.
            return Decision_Abstain()
        rules = parse_rules(host.config("rules") or "")
        unmapped = host.config("unmapped")
        if unmapped is None or unmapped == "keep":
            drop_unmapped = False
        elif unmapped == "drop":
            drop_unmapped = True
        else:
            raise RuntimeError(f"unmapped must be keep or drop, not {unmapped!r}")
        prefix = host.config("prefix") or ""

        grant = current.grant
        groups: list[str] = []

        def push(g: str) -> None:
            if g not in groups:
                groups.append(g)

        for group in grant.user.groups:
            for rule in rules:
                matched, mapped = rule.apply(group)
                if matched:
                    if mapped is not None:
                        push(mapped)
                    break
            else:
                if not drop_unmapped:
                    push(prefix + group)
        for g in split_list(host.config("add") or ""):
            push(g)
        grant.user.groups = groups
        username_prefix = host.config("username_prefix")
        if username_prefix is not None:
            grant.user.username = username_prefix + grant.user.username
        # Audiences and expiry: cleared, as the Rust mapper does (a mapper may only narrow them).
        grant.audiences = []
        grant.expires_at = None
        return Decision_Allow(grant)
