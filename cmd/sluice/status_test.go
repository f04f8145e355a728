package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/sluicelb/sluice/control/api"
)

// TestStatusEscapesReasons: a reason carrying terminal escapes, a tab
// or a newline (what a backend may have said) prints escaped, on its
// backend's line.
func TestStatusEscapesReasons(t *testing.T) {
	st := api.Status{VIPs: []api.VIPStatus{{VIP: "10.0.0.1:80/tcp", Forward: "ipip", Backends: []api.BackendStatus{{
		Addr: "10.0.1.1", State: "down", Weight: 100, EffectiveWeight: 100,
		Reason: "grpc Unavailable: \x1b]0;owned\a\tnext\ncolumn",
	}}}}}
	var out bytes.Buffer
	if err := printStatus(&out, st); err != nil {
		t.Fatal(err)
	}
	s := out.String()
	if strings.ContainsAny(s, "\x1b\a") {
		t.Fatalf("raw escapes printed: %q", s)
	}
	want := `grpc Unavailable: \x1b]0;owned\a\tnext\ncolumn`
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, "10.0.1.1") {
			if !strings.HasSuffix(strings.TrimSpace(line), want) {
				t.Fatalf("backend line %q, want it to end in %q", line, want)
			}
			return
		}
	}
	t.Fatalf("no line for the backend in:\n%s", s)
}
