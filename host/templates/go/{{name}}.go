// {{name}}: a tollgate policy. Bearer tokens are known by their SHA-256 digests, listed in the
// manifest's `[config] tokens`, one per line: `<sha256 hex of the token> <username> [group...]`.
// A listed token is its user; any other token is left to the next plugin (abstain).
//
// `tollgate build` puts this package into the Go module that `wit-bindgen go` generates from
// wit/policy.wit: the wit_component/tollgate_policy_* packages are its bindings.
package export_tollgate_policy_authenticator

import (
	"encoding/hex"
	"strings"

	crypto "wit_component/tollgate_policy_crypto"
	host "wit_component/tollgate_policy_host"
	types "wit_component/tollgate_policy_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// The host hashes at most 1 MiB in one call, and traps beyond it.
const maxHashInput = 1 << 20

// Authenticate decides one review.
func Authenticate(review types.Review) types.Decision {
	// The bindings' strings point into memory that the next call reuses: EndCall allows that.
	// Keep nothing of a review in a global past the call (or strings.Clone it).
	defer witRuntime.EndCall()
	if len(review.Token) == 0 || len(review.Token) > maxHashInput {
		return types.MakeDecisionAbstain()
	}
	// The host hashes and compares: native speed, and in constant time.
	digest := []byte(hex.EncodeToString(crypto.Sha256([]byte(review.Token))))
	tokens, _ := host.Config("tokens").Get()
	var found *types.UserInfo
	// Every line is compared, found or not: the time taken does not tell which line matched.
	for _, line := range strings.Split(tokens, "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue // blank, or a comment
		}
		if len(fields) < 2 || !isSHA256Hex(fields[0]) {
			continue // malformed: skipped
		}
		if crypto.ConstantTimeEq([]byte(strings.ToLower(fields[0])), digest) && found == nil {
			found = &types.UserInfo{Username: fields[1], Groups: fields[2:]} // uid "", no extra
		}
	}
	if found == nil {
		return types.MakeDecisionAbstain()
	}
	// Valid for the audiences the review names (the host intersects them with those anyway).
	return types.MakeDecisionAllow(types.Grant{User: *found, Audiences: review.Audiences, ExpiresAt: witTypes.None[uint64]()})
}

func isSHA256Hex(s string) bool {
	_, err := hex.DecodeString(s)
	return len(s) == 64 && err == nil
}
