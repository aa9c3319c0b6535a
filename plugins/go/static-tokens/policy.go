// static-tokens in Go: kube-apiserver's static token file, as SHA-256 digests of the tokens.
//
// Same config and behaviour as plugins/static-tokens (Rust):
//   - `tokens`: one user per line, fields separated by whitespace, `#` starts a comment:
//     `SHA256-HEX USERNAME [UID [GROUPS [EXTRA]]]`, GROUPS `g1,g2`, EXTRA `key=value,key=value`
//     (a repeated key adds a value), `-` stands for an empty field.
//   - `audiences` (optional): comma-separated audiences every grant states.
//
// An unlisted token gets `abstain`. A malformed line panics, which traps: the plugin fails
// closed (and fails its vectors at load). The token is never logged.
package export_tollgate_policy_authenticator

import (
	"encoding/hex"
	"fmt"
	"strings"

	"wit_component/text"
	"wit_component/tgcrypto"
	host "wit_component/tollgate_policy_host"
	types "wit_component/tollgate_policy_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

func parseLine(line string) ([]byte, types.Grant, error) {
	f := text.Fields(line)
	if len(f) < 2 || len(f) > 5 {
		return nil, types.Grant{}, fmt.Errorf("expected 2 to 5 fields, found %d", len(f))
	}
	digest, err := hex.DecodeString(f[0])
	if err != nil || len(digest) != 32 {
		return nil, types.Grant{}, fmt.Errorf("the first field must be 64 hex characters (a SHA-256 digest)")
	}
	field := func(i int) string {
		if i < len(f) && f[i] != "-" {
			return f[i]
		}
		return ""
	}
	var extra []witTypes.Tuple2[string, []string]
next:
	for _, pair := range text.SplitList(field(4)) {
		k, v, ok := strings.Cut(pair, "=")
		if !ok {
			return nil, types.Grant{}, fmt.Errorf("extra entry %q is not key=value", pair)
		}
		for i := range extra {
			if extra[i].F0 == k {
				extra[i].F1 = append(extra[i].F1, v)
				continue next
			}
		}
		extra = append(extra, witTypes.Tuple2[string, []string]{F0: k, F1: []string{v}})
	}
	user := types.UserInfo{Username: f[1], Uid: field(2), Groups: text.SplitList(field(3)), Extra: extra}
	return digest, types.Grant{User: user, ExpiresAt: witTypes.None[uint64]()}, nil
}

// Authenticate decides one review.
func Authenticate(review types.Review) types.Decision {
	defer witRuntime.EndCall()
	table := host.Config("tokens")
	// The host's SHA-256 takes at most 1 MiB (more traps). A longer token (possible only with
	// --max-body-bytes over 1 MiB) is taken as unlisted: it matches no line.
	listable := len(review.Token) <= tgcrypto.MaxHashBytes
	var digest [32]byte
	if listable {
		digest = tgcrypto.SHA256([]byte(review.Token))
	}
	var found *types.Grant
	// Every line is parsed and compared, found or not: the time taken does not depend on which
	// line (if any) matches. The host hashes and compares (tgcrypto), in constant time.
	for _, line := range text.ContentLines(optional(table)) {
		entryDigest, grant, err := parseLine(line.Text)
		if err != nil {
			panic(fmt.Sprintf("tokens line %d: %v", line.Number, err))
		}
		if tgcrypto.ConstantTimeEq(entryDigest, digest[:]) && listable && found == nil {
			found = &grant
		}
	}
	if found == nil {
		return types.MakeDecisionAbstain()
	}
	found.Audiences = text.SplitList(optional(host.Config("audiences")))
	return types.MakeDecisionAllow(*found)
}

func optional(o witTypes.Option[string]) string {
	v, _ := o.Get()
	return v
}
