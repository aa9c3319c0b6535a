// group-mapper in Go: rewrites the grant's groups (and optionally prefixes its username).
//
// Same config and behaviour as plugins/group-mapper (Rust):
//   - `rules`: one rule per line, `FROM TO`, `#` starts a comment. `FROM` is a group name, or a
//     prefix ending in `*`; a `*` in `TO` is replaced by what `FROM`'s `*` matched; `TO` = `-`
//     drops the group. The first matching rule wins.
//   - `unmapped`: `keep` (default) or `drop`; `prefix`: prepended to kept unmapped groups;
//     `add`: comma-separated groups added to every grant; `username_prefix`: prepended to the
//     username.
//
// Groups keep the order of first appearance, without duplicates. Without a current grant (not a
// mapper) it abstains. A malformed rule panics, which traps: the plugin fails closed.
package export_tollgate_policy_authenticator

import (
	"fmt"
	"slices"
	"strings"

	"wit_component/text"
	host "wit_component/tollgate_policy_host"
	types "wit_component/tollgate_policy_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

type rule struct {
	from     string
	wildcard bool
	drop     bool // TO is `-`
	to       string
}

func parseRule(line string) (rule, error) {
	f := text.Fields(line)
	if len(f) != 2 {
		return rule{}, fmt.Errorf("expected `FROM TO`, found %d fields", len(f))
	}
	from, wildcard := strings.CutSuffix(f[0], "*")
	if strings.Contains(from, "*") {
		return rule{}, fmt.Errorf("`*` may only end FROM")
	}
	return rule{from: from, wildcard: wildcard, drop: f[1] == "-", to: f[1]}, nil
}

// apply reports whether the rule matches, and if so the mapped group (drop = no group).
func (r rule) apply(group string) (matched, drop bool, mapped string) {
	var rest string
	if r.wildcard {
		var ok bool
		if rest, ok = strings.CutPrefix(group, r.from); !ok {
			return false, false, ""
		}
	} else if group != r.from {
		return false, false, ""
	}
	if r.drop {
		return true, true, ""
	}
	return true, false, strings.Replace(r.to, "*", rest, 1)
}

// Authenticate decides one review.
func Authenticate(review types.Review) types.Decision {
	defer witRuntime.EndCall()
	current, ok := review.Current.Get()
	if !ok {
		// Only a mapper has a current grant; as an authenticator it has no opinion.
		return types.MakeDecisionAbstain()
	}
	var rules []rule
	for _, line := range text.ContentLines(optional(host.Config("rules"))) {
		r, err := parseRule(line.Text)
		if err != nil {
			panic(fmt.Sprintf("rules line %d: %v", line.Number, err))
		}
		rules = append(rules, r)
	}
	dropUnmapped := false
	if unmapped, ok := host.Config("unmapped").Get(); ok {
		switch unmapped {
		case "keep":
		case "drop":
			dropUnmapped = true
		default:
			panic(fmt.Sprintf("unmapped must be keep or drop, not %q", unmapped))
		}
	}
	prefix := optional(host.Config("prefix"))

	grant := current.Grant
	groups := []string{}
	push := func(g string) {
		if !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	for _, group := range grant.User.Groups {
		matched := false
		for _, r := range rules {
			m, drop, mapped := r.apply(group)
			if m {
				matched = true
				if !drop {
					push(mapped)
				}
				break
			}
		}
		if !matched && !dropUnmapped {
			push(prefix + group)
		}
	}
	for _, g := range text.SplitList(optional(host.Config("add"))) {
		push(g)
	}
	grant.User.Groups = groups
	if p, ok := host.Config("username_prefix").Get(); ok {
		grant.User.Username = p + grant.User.Username
	}
	// Audiences and expiry: cleared, as the Rust mapper does (a mapper may only narrow them).
	grant.Audiences = nil
	grant.ExpiresAt = witTypes.None[uint64]()
	return types.MakeDecisionAllow(grant)
}

func optional(o witTypes.Option[string]) string {
	v, _ := o.Get()
	return v
}
