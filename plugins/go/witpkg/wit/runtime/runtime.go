// Package runtime is the canonical-ABI memory glue for generated bindings: `cabi_realloc`, and
// allocations pinned while the host reads them.
//
// Memory the host asks for through `cabi_realloc` (export arguments, import results) is NOT
// taken from Go's heap: the canonical ABI forbids a component from calling any import while the
// host is inside its `cabi_realloc`, and Go's allocator may call WASI (the clock, through the
// wasip1 adapter) on any allocation — which traps. Instead it comes from a bump arena of pages
// this package takes with `memory.grow`, above everything Go's heap can ever reach (see
// memory-layout.py in plugins/go). Go values that the bindings build over that memory (strings,
// via unsafe.String) are valid until the next export call starts: a policy that keeps one past
// its call must copy it (strings.Clone).
package runtime

import (
	"runtime"
	"unsafe"
)

const pageSize = 64 << 10

// The arena: the chunk being bumped through, and whether the call that used it has ended.
var (
	arenaStart, arenaNext, arenaEnd uintptr
	callEnded                       bool
)

// The address of every empty list or string: 8-aligned and never written. Not `align` as a
// number, as C bindings do: Go's stack copier throws ("invalid pointer found on stack") on a
// pointer below 4096 in a string that happens to be on the stack.
var zeroSized uint64

// memoryGrow is the wasm `memory.grow` instruction (memory_wasm.s): the old size in pages, or -1.
//
//go:noescape
func memoryGrow(pages int32) int32

// trap is the wasm `unreachable` instruction (memory_wasm.s).
func trap()

// Allocate returns size bytes aligned to align from Go's heap, pinned by pinner so that the
// garbage collector neither frees nor moves them while the host reads them. The generated
// bindings use it for return areas and lists handed to the host; never from cabi_realloc.
func Allocate(pinner *runtime.Pinner, size, align uintptr) unsafe.Pointer {
	if size == 0 {
		return unsafe.Pointer(&zeroSized)
	}
	if align > 8 {
		panic("cabi: alignment above 8")
	}
	// A []uint64 is 8-aligned and holds no Go pointers, so the GC never scans its contents.
	buf := make([]uint64, (size+7)/8)
	p := unsafe.Pointer(unsafe.SliceData(buf))
	pinner.Pin(p)
	return p
}

// Unpin is called by the generated export code once the arguments are Go values. Arena memory
// needs no unpinning; it is reused only after EndCall.
func Unpin() {}

// EndCall marks the end of an export call: the next cabi_realloc (the next call's arguments)
// starts the arena over. Call it (deferred) from the exported function; without it the arena
// only grows, which is harmless for the fresh instance tollgate gives every review.
func EndCall() { callEnded = true }

// cabiRealloc allocates from the arena. It must not allocate from Go's heap, grow its stack or
// call any import: nosplit, no Go allocation, only memory.grow and a copy.
//
//go:wasmexport cabi_realloc
//go:nosplit
func cabiRealloc(ptr unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	if newSize == 0 {
		return unsafe.Pointer(&zeroSized)
	}
	if callEnded {
		arenaNext, callEnded = arenaStart, false
	}
	a := uintptr(align)
	if a == 0 || a&(a-1) != 0 {
		a = 8
	}
	p := (arenaNext + a - 1) &^ (a - 1)
	if p+uintptr(newSize) > arenaEnd || arenaEnd == 0 {
		// A new chunk; what is left of the old one is abandoned.
		pages := (uintptr(newSize) + pageSize - 1) / pageSize
		old := memoryGrow(int32(pages))
		if old < 0 {
			// Out of memory: trap, the plugin fails closed.
			trap()
		}
		arenaStart = uintptr(old) * pageSize
		arenaEnd = arenaStart + pages*pageSize
		p = arenaStart
	}
	arenaNext = p + uintptr(newSize)
	if oldSize > 0 && ptr != nil {
		n := uintptr(min(oldSize, newSize))
		memmove(unsafe.Pointer(p), ptr, n)
	}
	return unsafe.Pointer(p)
}

// memmove is the runtime's (nosplit) memmove.
//
//go:linkname memmove runtime.memmove
//go:noescape
func memmove(to, from unsafe.Pointer, n uintptr)
