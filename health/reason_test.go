package health

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

func TestCleanReason(t *testing.T) {
	long := strings.Repeat("é", MaxReason) // 2 bytes each
	for _, c := range []struct{ in, want string }{
		{"connect: connection refused", "connect: connection refused"},
		{"", ""},
		{"red \x1b[31mRED\x1b[0m", `red \x1b[31mRED\x1b[0m`},
		{"two\nlines\r\tand a bell\a", `two\nlines\r\tand a bell\a`},
		{"bad \xff byte", `bad \xff byte`},
		{"zero\u200bwidth, bidi \u202e", `zero\u200bwidth, bidi \u202e`},
		{"ünïcode ok", "ünïcode ok"},
		{long, strings.Repeat("é", MaxReason/2) + "…"},
		{strings.Repeat("a", MaxReason-1) + "\x1b", strings.Repeat("a", MaxReason-1) + "…"},
	} {
		if got := CleanReason(c.in); got != c.want {
			t.Errorf("CleanReason(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// FuzzCleanReason: whatever the input, the reason is bounded and holds
// no character a terminal acts on.
func FuzzCleanReason(f *testing.F) {
	f.Add("grpc Unavailable: \x1b]0;pwned\a")
	f.Add(strings.Repeat("\xff", 300))
	f.Fuzz(func(t *testing.T, s string) {
		got := CleanReason(s)
		if len(got) > MaxReason+len("…") {
			t.Fatalf("%d bytes, bound %d", len(got), MaxReason)
		}
		for _, r := range got {
			if r != ' ' && !unicode.IsPrint(r) {
				t.Fatalf("%q holds %U", got, r)
			}
		}
		if len(s) <= MaxReason && utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return r != ' ' && !unicode.IsPrint(r) }) && got != s {
			t.Fatalf("a short printable reason changed: %q → %q", s, got)
		}
	})
}
