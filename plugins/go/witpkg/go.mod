// A minimal, local implementation of the two packages that `wit-bindgen go` output imports
// (go.bytecodealliance.org/pkg/wit/runtime and .../wit/types), written for tollgate because the
// Go module proxy is not reachable here. The build points the generated go.mod at it with a
// `replace` directive. Only what synchronous bindings use is here (no async, no resources).
module go.bytecodealliance.org/pkg

go 1.25
