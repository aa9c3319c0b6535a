// A test policy (not an example): has the host verify the token as a JWS through tgcrypto, and
// answers with everything the helpers returned, for tests/e2e/languages.rs.
//
// Config: `jwks` (a JWKS document's text), `algs` (comma-separated allowed algorithms),
// `mac_key` (an HMAC key).
//   - verified: allow, username `jws:ALG:KID` (KID `-` when the key has none), groups
//     `sha256:HEX` and `hmac:HEX` of the token, `eq:true` (a digest equals itself) and
//     `ne:false` (the digest is not the MAC), extra `header` and `payload` (the decoded JSON);
//   - not verified: deny with `KIND: MESSAGE` (`bad-signature` alone).
package export_tollgate_policy_authenticator

import (
	"encoding/hex"
	"errors"
	"fmt"

	"wit_component/text"
	"wit_component/tgcrypto"
	host "wit_component/tollgate_policy_host"
	types "wit_component/tollgate_policy_types"

	witRuntime "go.bytecodealliance.org/pkg/wit/runtime"
	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Authenticate decides one review.
func Authenticate(review types.Review) types.Decision {
	defer witRuntime.EndCall()
	jwks := config("jwks")
	algs := text.SplitList(config("algs"))
	verified, err := tgcrypto.VerifyJWS(review.Token, jwks, algs)
	if err != nil {
		// The error is a *tgcrypto.Error, and matches exactly the sentinel of its kind.
		var e *tgcrypto.Error
		if !errors.As(err, &e) {
			panic("VerifyJWS returned an error that is not a *tgcrypto.Error")
		}
		sentinels := []*tgcrypto.Error{tgcrypto.ErrMalformed, tgcrypto.ErrAlgorithm, tgcrypto.ErrNoKey,
			tgcrypto.ErrBadSignature, tgcrypto.ErrBadJWKS}
		for _, s := range sentinels {
			if errors.Is(err, s) != (s.Kind == e.Kind) {
				panic("errors.Is does not match the error's kind")
			}
		}
		return types.MakeDecisionDeny(err.Error())
	}
	token := []byte(review.Token)
	digest := tgcrypto.SHA256(token)
	mac := tgcrypto.HMACSHA256([]byte(config("mac_key")), token)
	kid := "-"
	if verified.HasKeyID {
		kid = verified.KeyID
	}
	groups := []string{
		"sha256:" + hex.EncodeToString(digest[:]),
		"hmac:" + hex.EncodeToString(mac[:]),
		fmt.Sprintf("eq:%t", tgcrypto.ConstantTimeEq(digest[:], digest[:])),
		fmt.Sprintf("ne:%t", tgcrypto.ConstantTimeEq(digest[:], mac[:])),
	}
	extra := []witTypes.Tuple2[string, []string]{
		{F0: "header", F1: []string{verified.Header}},
		{F0: "payload", F1: []string{verified.Payload}},
	}
	user := types.UserInfo{Username: "jws:" + verified.Alg + ":" + kid, Groups: groups, Extra: extra}
	return types.MakeDecisionAllow(types.Grant{User: user, ExpiresAt: witTypes.None[uint64]()})
}

func config(key string) string {
	v, _ := host.Config(key).Get()
	return v
}
