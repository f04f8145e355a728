package health

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func addrOf(t *testing.T, a string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func closedPort(t *testing.T) netip.AddrPort {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := addrOf(t, l.Addr().String())
	l.Close()
	return a
}

func TestProbes(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(503)
			return
		}
		w.Write([]byte("service healthy"))
	}))
	defer ok.Close()
	tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("tls ok")) }))
	defer tlsSrv.Close()
	hang, err := net.Listen("tcp", "127.0.0.1:0") // accepts (backlog) but never answers
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	udpEcho, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udpEcho.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := udpEcho.ReadFrom(buf)
			if err != nil {
				return
			}
			udpEcho.WriteTo(buf[:n], from)
		}
	}()
	udpClosed := func() netip.AddrPort {
		c, _ := net.ListenPacket("udp", "127.0.0.1:0")
		a := addrOf(t, c.LocalAddr().String())
		c.Close()
		return a
	}()
	httpAddr := addrOf(t, strings.TrimPrefix(ok.URL, "http://"))
	tlsAddr := addrOf(t, strings.TrimPrefix(tlsSrv.URL, "https://"))

	cases := []struct {
		name   string
		probe  Probe
		reason string // "" means pass
	}{ // every case has a 2s timeout but the timeout case, which has 150ms
		{"tcp open", Probe{Type: TCP, Addr: httpAddr}, ""},
		{"tcp refused", Probe{Type: TCP, Addr: closedPort(t)}, "connect: connection refused"},
		{"http 200", Probe{Type: HTTP, Addr: httpAddr}, ""},
		{"http body match", Probe{Type: HTTP, Addr: httpAddr, BodyContain: "healthy"}, ""},
		{"http body mismatch", Probe{Type: HTTP, Addr: httpAddr, BodyContain: "nope"}, `http 200: body lacks "nope"`},
		{"http 503", Probe{Type: HTTP, Addr: httpAddr, Path: "/bad"}, "http 503"},
		{"http 503 expected", Probe{Type: HTTP, Addr: httpAddr, Path: "/bad", Codes: "500-599"}, ""},
		{"http refused", Probe{Type: HTTP, Addr: closedPort(t)}, "connection refused"},
		{"http timeout", Probe{Type: HTTP, Addr: addrOf(t, hang.Addr().String())}, "timeout after 150ms"},
		{"https no verify", Probe{Type: HTTPS, Addr: tlsAddr}, ""},
		{"https verify fails on self-signed", Probe{Type: HTTPS, Addr: tlsAddr, TLSVerify: true}, "certificate"},
		{"udp reply", Probe{Type: UDP, Addr: addrOf(t, udpEcho.LocalAddr().String())}, ""},
		{"udp port unreachable", Probe{Type: UDP, Addr: udpClosed}, "udp: port unreachable"},
		{"none", Probe{Type: None}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			timeout := 2 * time.Second
			if strings.Contains(tc.reason, "timeout") {
				timeout = 150 * time.Millisecond
			}
			err := tc.probe.Run(context.Background(), timeout)
			switch {
			case tc.reason == "" && err != nil:
				t.Fatalf("failed: %v", err)
			case tc.reason != "" && err == nil:
				t.Fatalf("passed, want failure %q", tc.reason)
			case tc.reason != "" && !strings.Contains(err.Error(), tc.reason):
				t.Fatalf("reason %q, want %q", err, tc.reason)
			}
		})
	}
}

// flaky is a probe target whose answer the test switches.
type flaky struct{ fail atomic.Bool }

func (f *flaky) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if f.fail.Load() {
		return nil, &net.OpError{Op: "connect", Err: errors.New("connection refused")}
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

// TestStateMachine: down until rise passes, up until fall failures; each
// transition is one event with a reason.
func TestStateMachine(t *testing.T) {
	f := &flaky{}
	events := make(chan Event, 10)
	var probes atomic.Int64
	m := &Manager{OnEvent: func(e Event) { events <- e }, OnResult: func(Result) { probes.Add(1) }}
	defer m.Stop()
	c := Check{Probe: Probe{Type: TCP, Addr: addrOf(t, "192.0.2.1:80"), Dial: f.dial},
		Settings: Settings{Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 3, Fall: 2}}
	m.Sync(context.Background(), []Check{c}, nil)
	if st, _ := m.Status(c.ID()); st.Decided || st.State != Down {
		t.Fatalf("fresh check: %+v, want undecided and down", st)
	}
	next := func() Event {
		select {
		case e := <-events:
			return e
		case <-time.After(5 * time.Second):
			t.Fatal("no transition")
		}
		return Event{}
	}
	e := next()
	if e.From != Down || e.To != Up || !strings.Contains(e.Reason, "3 consecutive") {
		t.Fatalf("first event %+v, want down->up after 3 passes", e)
	}
	if n := probes.Load(); n < 3 {
		t.Fatalf("up after %d probes, want rise=3", n)
	}
	if st, _ := m.Status(c.ID()); !st.Decided {
		t.Fatal("a check that reached a verdict is not decided")
	}
	base := probes.Load()
	f.fail.Store(true)
	e = next()
	if e.To != Down || !strings.Contains(e.Reason, "refused") {
		t.Fatalf("event %+v, want up->down with the failure reason", e)
	}
	if n := probes.Load() - base; n < 2 {
		t.Fatalf("down after %d failed probes, want fall=2", n)
	}
	f.fail.Store(false)
	if e = next(); e.To != Up {
		t.Fatalf("event %+v, want recovery", e)
	}
	if st, ok := m.Status(c.ID()); !ok || st.State != Up {
		t.Fatalf("status %+v", st)
	}
}

// TestSharedChecks: two identical checks run once.
func TestSharedChecks(t *testing.T) {
	var dials atomic.Int64
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		a, b := net.Pipe()
		b.Close()
		return a, nil
	}
	c := Check{Probe: Probe{Type: TCP, Addr: addrOf(t, "192.0.2.1:80"), Dial: dial},
		Settings: Settings{Interval: 10 * time.Millisecond, Timeout: 5 * time.Millisecond, Rise: 1, Fall: 1}}
	m := &Manager{}
	m.Sync(context.Background(), []Check{c, c}, nil)
	m.mu.Lock()
	n := len(m.checks)
	m.mu.Unlock()
	m.Stop()
	if n != 1 {
		t.Fatalf("%d runners for two identical checks", n)
	}
}

// TestMarkDown: with MarkDown, a refused, reset or unreachable probe
// takes an up backend down at the first failure; a timeout still counts
// one towards fall, and without MarkDown every failure does.
func TestMarkDown(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, c := range []struct {
		name     string
		markDown bool
		err      error // nil: the probe times out
		want     int64 // failed probes before down
	}{
		{"refused, mark-down", true, refused, 1},
		{"reset, mark-down", true, &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, 1},
		{"host unreachable, mark-down", true, &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}, 1},
		{"timeout, mark-down", true, nil, 3},
		{"refused, fail-check", false, refused, 3},
	} {
		t.Run(c.name, func(t *testing.T) {
			var fail atomic.Bool
			dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
				if !fail.Load() {
					a, b := net.Pipe()
					b.Close()
					return a, nil
				}
				if c.err == nil {
					<-ctx.Done()
					return nil, ctx.Err()
				}
				return nil, c.err
			}
			type seen struct {
				e      Event
				failed int64 // failed probes when it came: OnEvent follows OnResult on one goroutine
			}
			events := make(chan seen, 10)
			var failed atomic.Int64
			m := &Manager{OnEvent: func(e Event) { events <- seen{e, failed.Load()} }, OnResult: func(r Result) {
				if r.Err != nil {
					failed.Add(1)
				}
			}}
			defer m.Stop()
			ch := Check{Probe: Probe{Type: TCP, Addr: addrOf(t, "192.0.2.1:80"), Dial: dial},
				Settings: Settings{Interval: 20 * time.Millisecond, Timeout: 10 * time.Millisecond, Rise: 1, Fall: 3, MarkDown: c.markDown}}
			m.Sync(context.Background(), []Check{ch}, nil)
			if s := <-events; s.e.To != Up {
				t.Fatalf("first event %+v, want up", s.e)
			}
			fail.Store(true)
			s := <-events
			e := s.e
			if e.To != Down {
				t.Fatalf("event %+v, want down", e)
			}
			if n := s.failed; n != c.want {
				t.Fatalf("down after %d failed probes, want %d (%s)", n, c.want, e.Reason)
			}
			if hard := strings.Contains(e.Reason, "hard error"); hard != (c.want == 1) {
				t.Fatalf("reason %q: hard-error note %v, want %v", e.Reason, hard, c.want == 1)
			}
		})
	}
}

// TestProbeVia: a probe through the data plane is its own probe (two
// backends of one VIP are two checks), never dials the VIP unmarked, and
// says in its error that it went via the VIP.
func TestProbeVia(t *testing.T) {
	vip := addrOf(t, "192.0.2.1:80")
	p1 := Probe{Type: TCP, Addr: vip, Via: netip.MustParseAddr("10.0.0.2")}
	p2 := Probe{Type: TCP, Addr: vip, Via: netip.MustParseAddr("10.0.0.3")}
	if p1.Key() == p2.Key() || p1.Key() == (Probe{Type: TCP, Addr: vip}).Key() {
		t.Fatal("probes via two backends (or none) share a key")
	}
	err := p1.Run(context.Background(), time.Second)
	if err == nil || !strings.Contains(err.Error(), "via vip 192.0.2.1:80: no dialer through the data plane to backend 10.0.0.2") {
		t.Fatalf("a probe via the vip without its dialer: %v", err)
	}
	p1.Dial = func(context.Context, string, string) (net.Conn, error) { return nil, syscall.ECONNREFUSED }
	if err := p1.Run(context.Background(), time.Second); err == nil || !IsHard(err) || !strings.HasPrefix(err.Error(), "via vip 192.0.2.1:80: ") {
		t.Fatalf("a refused probe via the vip: %v (hard %v)", err, IsHard(err))
	}
}

// TestSyncAfterStop: a Sync that races the shutdown (a change committed
// as the daemon stops) starts no check, so Stop's wait cannot hang.
func TestSyncAfterStop(t *testing.T) {
	m := &Manager{}
	m.Stop()
	c := Check{Probe: Probe{Type: TCP, Addr: netip.MustParseAddrPort("127.0.0.1:9")}, Settings: Settings{Interval: time.Millisecond, Timeout: time.Millisecond, Rise: 1, Fall: 1}}
	m.Sync(context.Background(), []Check{c}, nil)
	if _, ok := m.Status(c.ID()); ok {
		t.Fatal("a check started after Stop")
	}
	m.Stop()
}
