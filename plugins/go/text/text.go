// Package text holds the parsing helpers shared by the Go policies, matching the Rust examples
// exactly: lines split at '\n', '#' cuts a comment, fields are separated by Unicode White_Space
// (Rust's `char::is_whitespace`; Go's unicode.IsSpace is the same set), lists by ','.
package text

import (
	"strings"
	"unicode"
)

// Trim is Rust's `str::trim`.
func Trim(s string) string { return strings.TrimFunc(s, unicode.IsSpace) }

// Fields is Rust's `str::split_whitespace`.
func Fields(s string) []string { return strings.FieldsFunc(s, unicode.IsSpace) }

// Line is a line that is not blank once its comment is cut.
type Line struct {
	Number int // 1-based
	Text   string
}

// ContentLines are the lines of text that are not blank once their `#` comment is cut.
func ContentLines(text string) []Line {
	var out []Line
	for i, line := range strings.Split(text, "\n") {
		line, _, _ = strings.Cut(line, "#")
		if line = Trim(line); line != "" {
			out = append(out, Line{i + 1, line})
		}
	}
	return out
}

// SplitList splits comma-separated items, trimmed, skipping empty ones.
func SplitList(s string) []string {
	out := []string{}
	for _, item := range strings.Split(s, ",") {
		if item = Trim(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
