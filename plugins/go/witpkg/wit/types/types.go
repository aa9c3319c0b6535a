// Package types holds the generic WIT value types that generated bindings use.
package types

// Tags of an Option.
const (
	OptionNone uint8 = 0
	OptionSome uint8 = 1
)

// Option is a WIT option<T>.
type Option[T any] struct {
	tag   uint8
	value T
}

// None is an empty option.
func None[T any]() Option[T] { return Option[T]{} }

// Some is an option holding v.
func Some[T any](v T) Option[T] { return Option[T]{tag: OptionSome, value: v} }

// Tag is OptionNone or OptionSome.
func (o Option[T]) Tag() uint8 { return o.tag }

// IsSome tells whether the option holds a value.
func (o Option[T]) IsSome() bool { return o.tag == OptionSome }

// IsNone tells whether the option is empty.
func (o Option[T]) IsNone() bool { return o.tag == OptionNone }

// Some is the value; it panics (traps) on an empty option.
func (o Option[T]) Some() T {
	if o.tag != OptionSome {
		panic("option is none")
	}
	return o.value
}

// Get is the value and whether there is one.
func (o Option[T]) Get() (T, bool) { return o.value, o.tag == OptionSome }

// Tuple2 is a WIT tuple<A, B>.
type Tuple2[A, B any] struct {
	F0 A
	F1 B
}

// Unit is the empty value, the T or E of a WIT result without one (`result<_, E>`).
type Unit struct{}

// Tags of a Result.
const (
	ResultOk  uint8 = 0
	ResultErr uint8 = 1
)

// Result is a WIT result<T, E>.
type Result[T any, E any] struct {
	tag   uint8
	value any
}

// Ok is a successful result holding v.
func Ok[T any, E any](v T) Result[T, E] { return Result[T, E]{ResultOk, v} }

// Err is a failed result holding e.
func Err[T any, E any](e E) Result[T, E] { return Result[T, E]{ResultErr, e} }

// Tag is ResultOk or ResultErr.
func (r Result[T, E]) Tag() uint8 { return r.tag }

// IsOk tells whether the result is a success.
func (r Result[T, E]) IsOk() bool { return r.tag == ResultOk }

// IsErr tells whether the result is a failure.
func (r Result[T, E]) IsErr() bool { return r.tag == ResultErr }

// Ok is the success value; it panics (traps) on a failure.
func (r Result[T, E]) Ok() T {
	if r.tag != ResultOk {
		panic("result is an error")
	}
	return r.value.(T)
}

// Err is the error value; it panics (traps) on a success.
func (r Result[T, E]) Err() E {
	if r.tag != ResultErr {
		panic("result is not an error")
	}
	return r.value.(E)
}
