package health

import (
	"errors"
	"strings"
	"testing"
)

func TestParseAgentAnswer(t *testing.T) {
	for _, c := range []struct {
		in   string
		want AgentReport
		bad  string // part of the error; "" means accepted
	}{
		{"75%\n", AgentReport{Weight: 75}, ""},
		{"up\n", AgentReport{Weight: -1, Op: AgentUp}, ""},
		{"drain", AgentReport{Weight: -1, Admin: AgentDrain}, ""},
		{"DOWN # model not loaded\r\n", AgentReport{Weight: -1, Op: AgentDown, Desc: "model not loaded"}, ""},
		{"ready,up,50%", AgentReport{Weight: 50, Op: AgentUp, Admin: AgentReady}, ""},
		{"stopped\tmaint", AgentReport{Weight: -1, Op: AgentDown, Admin: AgentMaint}, ""},
		{"0% maxconn:30", AgentReport{Weight: 0}, ""},
		{"up\nignored second line", AgentReport{Weight: -1, Op: AgentUp}, ""},
		{"", AgentReport{}, "no words"},
		{"# only a comment", AgentReport{}, "no words"},
		{"101%", AgentReport{}, "want 0% to 100%"},
		{"-5%", AgentReport{}, "want 0% to 100%"},
		{"075%", AgentReport{}, "want 0% to 100%"},
		{"50% 60%", AgentReport{}, "two weights"},
		{"up down", AgentReport{}, "contradict"},
		{"drain maint", AgentReport{}, "contradict"},
		{"healthy", AgentReport{}, `unknown word "healthy"`},
		{"maxconn:x", AgentReport{}, "not a connection count"},
		{"up\x00", AgentReport{}, "not printable ASCII"},
		{"up é", AgentReport{}, "not printable ASCII"},
		{strings.Repeat("up ", 200), AgentReport{}, "at most 512"},
	} {
		got, err := ParseAgentAnswer([]byte(c.in))
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.bad == "" && got != c.want:
			t.Errorf("%q: %+v, want %+v", c.in, got, c.want)
		case c.bad != "" && (err == nil || !errors.Is(err, ErrAgentAnswer) || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%q: %+v, %v; want an ErrAgentAnswer naming %q", c.in, got, err, c.bad)
		case c.bad != "" && got != (AgentReport{Weight: -1}):
			t.Errorf("%q: refused, but returned %+v", c.in, got)
		}
	}
}

// FuzzAgentAnswer: an agent is a backend, its answer untrusted input.
// Any answer is either refused (ErrAgentAnswer, nothing returned) or
// yields a report in range that reads back the same from its String; an
// answer of only ignored words ("maxconn:0") says nothing, and its
// report is the empty one.
func FuzzAgentAnswer(f *testing.F) {
	for _, s := range []string{"75%\n", "up", "drain # warming", "ready,up,50%", "down maxconn:3", "up down", "101%", "\x00", "mAXConn:0"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseAgentAnswer(b)
		if err != nil {
			if !errors.Is(err, ErrAgentAnswer) || r != (AgentReport{Weight: -1}) {
				t.Fatalf("%q: refused with %v but returned %+v", b, err, r)
			}
			return
		}
		if r.Weight < -1 || r.Weight > 100 {
			t.Fatalf("%q: weight %d", b, r.Weight)
		}
		if r == (AgentReport{Weight: -1}) {
			return // only ignored words: nothing to read back (String is "")
		}
		again, err := ParseAgentAnswer([]byte(r.String()))
		if err != nil || again != r {
			t.Fatalf("%q: %+v reads back from %q as %+v, %v", b, r, r.String(), again, err)
		}
	})
}
