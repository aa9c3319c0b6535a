// Package tgcrypto is the host's cryptography (`tollgate:policy/crypto`, contract 0.1.2) for Go
// policies, over the bindings `wit-bindgen go` generates: a signed JWT verified by the host at
// native speed, SHA-256, HMAC-SHA-256 and a constant-time comparison.
//
// Everything returned is an ordinary Go value that may be kept past the call (the bindings'
// strings point into memory that the next export call reuses; these are copies). A hash of more
// than MaxHashBytes traps: the review fails closed.
package tgcrypto

import (
	"strings"

	crypto "wit_component/tollgate_policy_crypto"
)

// MaxHashBytes is the host's limit on the data of one SHA256 or HMACSHA256 call; more traps.
const MaxHashBytes = 1 << 20

// Verified is a JWS whose signature the host verified with a key of the JWKS.
type Verified struct {
	Alg      string // the algorithm it was signed with (one of the allowed ones)
	KeyID    string // the `kid` of the key that verified it ("" if HasKeyID is false)
	HasKeyID bool   // whether that key has a `kid`
	Header   string // the protected header: JSON text
	Payload  string // the payload (a JWT's claims): JSON text. Check the claims yourself.
}

// String shows the algorithm and key id only: the payload is the token's content and stays out
// of logs, also through fmt's %v and %+v.
func (v Verified) String() string {
	return "Verified{Alg: " + v.Alg + ", KeyID: " + v.KeyID + "}"
}

// GoString is String, for %#v.
func (v Verified) GoString() string { return v.String() }

// Kind says why a JWS was not verified: the host's `jws-error` cases.
type Kind int

const (
	// Malformed: not a compact JWS, `crit` in the header, a payload not UTF-8, over 64 KiB.
	Malformed Kind = iota + 1
	// Algorithm: `alg` is not allowed (and never is: none, HMAC), or an allowed one is unknown.
	Algorithm
	// NoKey: no key of the JWKS fits the `kid` and `alg`; fetching the JWKS again may help.
	NoKey
	// BadSignature: a key fits, and the signature is not its.
	BadSignature
	// BadJWKS: the JWKS is unusable (not JSON, no `keys`, over 256 KiB or 64 keys).
	BadJWKS
)

// String is the kind's WIT name: malformed, algorithm, no-key, bad-signature, jwks.
func (k Kind) String() string {
	switch k {
	case Malformed:
		return "malformed"
	case Algorithm:
		return "algorithm"
	case NoKey:
		return "no-key"
	case BadSignature:
		return "bad-signature"
	case BadJWKS:
		return "jwks"
	}
	return "unknown"
}

// Error is why the host did not verify a JWS. Its text never holds the token.
type Error struct {
	Kind    Kind
	Message string // the host's reason ("" for BadSignature)
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Kind.String()
	}
	return e.Kind.String() + ": " + e.Message
}

// Is matches an error of the same kind, so that errors.Is(err, tgcrypto.ErrNoKey) works.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Kind == e.Kind
}

// Sentinels for errors.Is, one per kind.
var (
	ErrMalformed    = &Error{Kind: Malformed}
	ErrAlgorithm    = &Error{Kind: Algorithm}
	ErrNoKey        = &Error{Kind: NoKey}
	ErrBadSignature = &Error{Kind: BadSignature}
	ErrBadJWKS      = &Error{Kind: BadJWKS}
)

// VerifyJWS has the host verify compact (a JWS in compact form: a signed JWT) against the keys
// of jwks (a JWKS document's text) with one of algs (RS256, RS384, RS512, PS256, PS384, PS512,
// ES256, ES384, EdDSA). The error is an *Error. Pass the same JWKS text on every call: the host
// keeps the parsed keys of the last few documents it saw, so a repeat costs a hash, not a parse.
func VerifyJWS(compact, jwks string, algs []string) (Verified, error) {
	result := crypto.VerifyJws(compact, jwks, algs)
	if result.IsOk() {
		v := result.Ok()
		kid, has := v.KeyId.Get()
		return Verified{
			Alg:      strings.Clone(v.Alg),
			KeyID:    strings.Clone(kid),
			HasKeyID: has,
			Header:   strings.Clone(v.Header),
			Payload:  strings.Clone(v.Payload),
		}, nil
	}
	e := result.Err()
	switch e.Tag() {
	case crypto.JwsError_Malformed:
		return Verified{}, &Error{Malformed, strings.Clone(e.Malformed())}
	case crypto.JwsError_Algorithm:
		return Verified{}, &Error{Algorithm, strings.Clone(e.Algorithm())}
	case crypto.JwsError_NoKey:
		return Verified{}, &Error{NoKey, strings.Clone(e.NoKey())}
	case crypto.JwsError_BadSignature:
		return Verified{}, &Error{BadSignature, ""}
	case crypto.JwsError_Jwks:
		return Verified{}, &Error{BadJWKS, strings.Clone(e.Jwks())}
	}
	panic("tgcrypto: a jws-error case this package does not know") // fail closed
}

// SHA256 is the SHA-256 of data (at most MaxHashBytes; more traps).
func SHA256(data []byte) [32]byte {
	return digest(crypto.Sha256(data))
}

// HMACSHA256 is the HMAC-SHA-256 of data under key (at most MaxHashBytes of data; more traps).
func HMACSHA256(key, data []byte) [32]byte {
	return digest(crypto.HmacSha256(key, data))
}

// ConstantTimeEq reports whether a and b are equal, in time that depends only on their
// lengths: compare digests and MACs of secrets with this, never with == or bytes.Equal.
func ConstantTimeEq(a, b []byte) bool {
	return crypto.ConstantTimeEq(a, b)
}

func digest(d []byte) [32]byte {
	if len(d) != 32 {
		panic("tgcrypto: the host returned a digest that is not 32 bytes")
	}
	var out [32]byte
	copy(out[:], d)
	return out
}
