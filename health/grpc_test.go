package health

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	ghealth "google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCProbe runs the probe against grpc-go's own health server:
// SERVING passes; NOT_SERVING, an unknown service, a stopped server and
// a server that never answers each fail with the cause named.
func TestGRPCProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := ghealth.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	go srv.Serve(l)
	defer srv.Stop()
	hs.SetServingStatus("model", healthpb.HealthCheckResponse_SERVING)
	addr := netip.MustParseAddrPort(l.Addr().String())
	probe := func(service string) error {
		return Probe{Type: GRPC, Addr: addr, Service: service}.Run(context.Background(), time.Second)
	}
	for _, c := range []struct {
		name, service string
		set           func()
		want          string // "" passes
	}{
		{"overall health serving", "", func() {}, ""},
		{"service serving", "model", func() {}, ""},
		{"service not serving", "model", func() { hs.SetServingStatus("model", healthpb.HealthCheckResponse_NOT_SERVING) }, `service "model" is NOT_SERVING`},
		{"unknown service", "other", func() {}, "grpc NotFound"},
		{"service back", "model", func() { hs.SetServingStatus("model", healthpb.HealthCheckResponse_SERVING) }, ""},
		{"server shutting down", "model", hs.Shutdown, `service "model" is NOT_SERVING`},
	} {
		c.set()
		err := probe(c.service)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v, want pass", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s: %v, want an error naming %q", c.name, err, c.want)
		}
	}
	srv.Stop()
	if err := probe(""); err == nil || err.Error() != "connect: connection refused" {
		t.Errorf("stopped server: %v, want connect: connection refused", err)
	}
	// A listener that accepts and never speaks: the probe times out.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	err = Probe{Type: GRPC, Addr: netip.MustParseAddrPort(silent.Addr().String())}.Run(context.Background(), 200*time.Millisecond)
	if err == nil || err.Error() != "timeout after 200ms" {
		t.Errorf("silent server: %v, want timeout after 200ms", err)
	}
}

// hostileHealth answers every check with a status message it chose.
type hostileHealth struct {
	healthpb.UnimplementedHealthServer
	msg string
}

func (h hostileHealth) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	return nil, status.Error(codes.Unavailable, h.msg)
}

// TestGRPCReasonBounded: a backend's status message reaches the reason
// bounded and with its terminal escapes escaped, and a message beyond
// the header bound is refused by the client rather than read.
func TestGRPCReasonBounded(t *testing.T) {
	for _, c := range []struct {
		name, msg, want string
	}{
		{"escapes", "\x1b]0;owned\a\x1b[2J down", `grpc Unavailable: \x1b]0;owned\a\x1b[2J down`},
		{"long", strings.Repeat("x", 8<<10), "grpc Unavailable: " + strings.Repeat("x", MaxReason) + "…"},
		{"beyond the header bound", strings.Repeat("y", 64<<10), "grpc Internal: stream terminated by RST_STREAM"},
	} {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		healthpb.RegisterHealthServer(srv, hostileHealth{msg: c.msg})
		go srv.Serve(l)
		err = Probe{Type: GRPC, Addr: netip.MustParseAddrPort(l.Addr().String())}.Run(context.Background(), time.Second)
		srv.Stop()
		if err == nil {
			t.Fatalf("%s: passed", c.name)
		}
		if got := err.Error(); !strings.Contains(got, c.want) || len(got) > MaxReason+100 {
			t.Errorf("%s: %d bytes %.200q, want %.200q", c.name, len(got), got, c.want)
		}
	}
}
