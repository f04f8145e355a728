package health

import (
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxReason bounds a check's reason, in bytes: it names a cause, and
// what a backend chose to say (a gRPC status message, a connection
// error's text) must neither fill status nor the event log.
const MaxReason = 256

// CleanReason is s bounded to MaxReason bytes (cut on a character, then
// "…") with every control character, non-printable character and
// invalid byte escaped as Go writes it in a string (\x1b, \n, \u200b):
// a reason can then be printed to a terminal as it is.
func CleanReason(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		piece := s[i : i+n]
		switch {
		case r == utf8.RuneError && n == 1:
			piece = `\x` + strconv.FormatUint(uint64(s[i])|0x100, 16)[1:]
		case r != ' ' && !unicode.IsPrint(r):
			q := strconv.QuoteRuneToASCII(r)
			piece = q[1 : len(q)-1]
		}
		if b.Len()+len(piece) > MaxReason {
			b.WriteString("…")
			break
		}
		b.WriteString(piece)
		i += n
	}
	return b.String()
}
