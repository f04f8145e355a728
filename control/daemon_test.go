package control

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
	"github.com/sluicelb/sluice/health"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/memdp"
)

// These tests run the daemon without a kernel: the data plane is
// memdp's, and the backends are real TCP listeners on loopback
// addresses, probed by the real checker.

type fixedMAC struct{}

func (fixedMAC) Resolve(context.Context, netip.Addr) (net.HardwareAddr, error) {
	return net.HardwareAddr{2, 0, 0, 0, 0, 9}, nil
}

// backend is a listener the checks probe; close it and they fail.
type backend struct {
	addr string
	l    net.Listener
}

func listen(t *testing.T, addr string, port int) *backend {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(addr, itoa(port)))
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return &backend{addr: addr, l: l}
}

func itoa(n int) string { return strconv.Itoa(n) }

// freePort is a TCP port free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type daemon struct {
	*Daemon
	dp     *memdp.Datapath
	api    http.Handler
	waited map[string]int // events waitEvent returned, by what they were
}

func newDaemon(t *testing.T) *daemon {
	t.Helper()
	dp := memdp.New("memdp0")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	d, err := New(ctx, Options{Iface: "memdp0", StateDir: dir, Socket: filepath.Join(dir, "sluice.sock"),
		Seed: 0x5eed, Resolver: fixedMAC{}, Datapath: dp, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); d.shutdown() }) // as Run ends
	return &daemon{Daemon: d, dp: dp, api: d.apiHandler(), waited: map[string]int{}}
}

// call sends an API request and decodes its answer into out.
func (d *daemon) call(t *testing.T, method, path string, body any, out any) int {
	t.Helper()
	raw, _ := json.Marshal(body)
	w := httptest.NewRecorder()
	d.api.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader(string(raw))))
	if out != nil {
		json.Unmarshal(w.Body.Bytes(), out)
	}
	return w.Code
}

func (d *daemon) mustCall(t *testing.T, method, path string, body any) {
	t.Helper()
	var e api.ErrorResponse
	if code := d.call(t, method, path, body, &e); code != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, code, e.Error)
	}
}

func tcpCheck() state.Check {
	return state.Check{Type: "tcp", Interval: state.Duration(40 * time.Millisecond), Timeout: state.Duration(40 * time.Millisecond), Rise: 1, Fall: 1}
}

// slots counts the VIP's ring by backend address.
func (d *daemon) slots(t *testing.T, vip string) map[string]int {
	t.Helper()
	k, _ := state.ParseVIPKey(vip)
	out := map[string]int{}
	for a, n := range d.dp.Slots(loader.VIPKey{Addr: k.Addr, Port: k.Port, Proto: loader.Proto(k.Proto)}) {
		out[a.String()] += n
	}
	return out
}

// waitEvent waits for the next event of kind about backend addr, to
// state to: the first such event after those it returned before.
func (d *daemon) waitEvent(t *testing.T, kind, addr, to string) api.Event {
	t.Helper()
	c, stop := d.events.Follow()
	defer stop()
	key := kind + " " + addr + " " + to
	seen := 0
	for _, e := range d.events.List() {
		if e.Kind == kind && e.Backend == addr && e.To == to {
			if seen++; seen > d.waited[key] {
				d.waited[key]++
				return e
			}
		}
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case e := <-c:
			if e.Kind == kind && e.Backend == addr && e.To == to {
				d.waited[key]++
				return e
			}
		case <-timeout:
			t.Fatalf("no %s event of %s to %s within 5 s", kind, addr, to)
		}
	}
}

// TestDaemonSpreadsAndFailsOver: a VIP added through the API gets a ring
// over its three backends once their checks pass; a backend whose
// listener goes away is taken out (its flag and its slots), and the ring
// goes back to three when it returns. Bad requests are refused with the
// field named and the status of their kind, changing nothing.
func TestDaemonSpreadsAndFailsOver(t *testing.T) {
	d := newDaemon(t)
	port := freePort(t)
	vip := "10.0.0.100:" + itoa(port) + "/tcp"
	bes := []*backend{listen(t, "127.0.0.2", port), listen(t, "127.0.0.3", port), listen(t, "127.0.0.4", port)}
	d.mustCall(t, "POST", "/v1/vips", api.VIPAddRequest{VIP: vip, Forward: "dsr", RingSize: 4099})
	for _, b := range bes {
		d.mustCall(t, "POST", "/v1/backends", api.BackendAddRequest{VIP: vip, Backend: state.Backend{Addr: b.addr, Weight: 1, Check: tcpCheck()}})
		d.waitEvent(t, "health", b.addr, "up")
	}
	if s := d.slots(t, vip); len(s) != 3 || s["127.0.0.2"] < 1365 || s["127.0.0.2"] > 1367 {
		t.Fatalf("ring %v, want 1365-1366 slots for each of 3", s)
	}
	bes[1].l.Close()
	e := d.waitEvent(t, "health", "127.0.0.3", "down")
	if s := d.slots(t, vip); s["127.0.0.3"] != 0 || s["127.0.0.2"]+s["127.0.0.4"] != 4099 {
		t.Fatalf("after 127.0.0.3 went down (%s): ring %v", e.Reason, s)
	}
	st, _ := d.core.Status()
	for _, b := range st.VIPs[0].Backends {
		if (b.Addr == "127.0.0.3") == (b.Usable || b.State != "down") {
			t.Errorf("%s: usable %v state %s", b.Addr, b.Usable, b.State)
		}
	}
	bes[1] = listen(t, "127.0.0.3", port)
	d.waitEvent(t, "health", "127.0.0.3", "up")
	if s := d.slots(t, vip); len(s) != 3 {
		t.Fatalf("after 127.0.0.3 came back: ring %v", s)
	}
	before := d.core.Revision()
	for _, c := range []struct {
		method, path string
		body         any
		code         int
		want         string
	}{
		{"POST", "/v1/vips", api.VIPAddRequest{VIP: "10.0.0.101:80/tcp", RingSize: 100}, 400, "ring_size 100"},
		{"POST", "/v1/vips", api.VIPAddRequest{VIP: vip}, 409, "already exists"},
		{"POST", "/v1/backends", api.BackendAddRequest{VIP: "10.0.0.100:0/tcp", Backend: state.Backend{Addr: "127.0.0.9"}}, 404, "no such vip"},
		{"POST", "/v1/backends/action", api.BackendActionRequest{VIP: vip, Addr: "127.0.0.9", Action: "drain"}, 404, "no such backend"},
		{"POST", "/v1/backends/action", api.BackendActionRequest{VIP: vip, Addr: "127.0.0.2", Action: "panic"}, 400, `action "panic"`},
		{"POST", "/v1/ha/failover", nil, 409, "not part of an LB pair"},
		{"POST", "/v1/node/drain", nil, 400, "does not announce over BGP"},
	} {
		var e api.ErrorResponse
		if code := d.call(t, c.method, c.path, c.body, &e); code != c.code || !strings.Contains(e.Error, c.want) {
			t.Errorf("%s %s: %d %q, want %d naming %q", c.method, c.path, code, e.Error, c.code, c.want)
		}
	}
	if after := d.core.Revision(); after != before {
		t.Errorf("refused requests moved the revision %d -> %d", before, after)
	}
}

// countingHealth passes the checker's answers on and counts the
// questions.
type countingHealth struct {
	inner interface {
		Status(health.ID) (health.Status, bool)
	}
	mu sync.Mutex
	n  int
}

func (c *countingHealth) Status(id health.ID) (health.Status, bool) {
	c.mu.Lock()
	c.n++
	c.mu.Unlock()
	return c.inner.Status(id)
}

func (c *countingHealth) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = 0
	return n
}

// TestOneApplyAsksHealthOncePerBackend: an apply, a committed change
// and a health verdict each ask the checker for every backend's verdict
// exactly once (a backend without a check is not asked about).
func TestOneApplyAsksHealthOncePerBackend(t *testing.T) {
	d := newDaemon(t)
	port := freePort(t)
	vip := "10.0.0.100:" + itoa(port) + "/tcp"
	listen(t, "127.0.0.2", port)
	b3 := listen(t, "127.0.0.3", port)
	d.mustCall(t, "POST", "/v1/vips", api.VIPAddRequest{VIP: vip, RingSize: 4099})
	d.mustCall(t, "POST", "/v1/vips", api.VIPAddRequest{VIP: "10.0.0.101:80/tcp", RingSize: 4099})
	for _, a := range []string{"127.0.0.2", "127.0.0.3"} {
		d.mustCall(t, "POST", "/v1/backends", api.BackendAddRequest{VIP: vip, Backend: state.Backend{Addr: a, Weight: 1, Check: tcpCheck()}})
		d.waitEvent(t, "health", a, "up")
	}
	d.mustCall(t, "POST", "/v1/backends", api.BackendAddRequest{VIP: "10.0.0.101:80/tcp", Backend: state.Backend{Addr: "127.0.0.2", Weight: 1, Check: state.Check{Type: "none"}}})
	h := &countingHealth{inner: d.core.health}
	d.core.mu.Lock()
	d.core.health = h
	d.core.mu.Unlock()
	d.core.Reapply("test")
	if n := h.count(); n != 2 {
		t.Errorf("an apply asked health %d times, want 2 (two backends with checks)", n)
	}
	d.mustCall(t, "POST", "/v1/backends/action", api.BackendActionRequest{VIP: vip, Addr: "127.0.0.2", Action: "drain"})
	if n := h.count(); n != 2 {
		t.Errorf("a committed change asked health %d times, want 2", n)
	}
	b3.l.Close()
	d.waitEvent(t, "health", "127.0.0.3", "down")
	if n := h.count(); n != 2 {
		t.Errorf("a verdict's apply asked health %d times, want 2", n)
	}
}

// TestFailoverPromotes: a failover VIP elects its highest-priority up
// backend, and when that one fails promotes the next, raising the epoch;
// the ring follows the primary alone.
func TestFailoverPromotes(t *testing.T) {
	d := newDaemon(t)
	port := freePort(t)
	vip := "10.0.0.100:" + itoa(port) + "/tcp"
	first := listen(t, "127.0.0.2", port)
	listen(t, "127.0.0.3", port)
	d.mustCall(t, "POST", "/v1/vips", api.VIPAddRequest{VIP: vip, RingSize: 4099, Policy: "failover"})
	for a, prio := range map[string]int{"127.0.0.2": 20, "127.0.0.3": 10} {
		d.mustCall(t, "POST", "/v1/backends", api.BackendAddRequest{VIP: vip, Backend: state.Backend{Addr: a, Weight: 1, Priority: prio, Check: tcpCheck()}})
	}
	d.waitEvent(t, "failover", "127.0.0.2", "127.0.0.2")
	if s := d.slots(t, vip); s["127.0.0.2"] != 4099 {
		t.Fatalf("ring %v, want every slot on the primary 127.0.0.2", s)
	}
	epoch := d.core.State().VIPs[0].Epoch
	first.l.Close()
	d.waitEvent(t, "failover", "127.0.0.3", "127.0.0.3")
	st := d.core.State().VIPs[0]
	if st.Primary != "127.0.0.3" || st.Epoch <= epoch {
		t.Fatalf("primary %s epoch %d (was %d), want 127.0.0.3 and a higher epoch", st.Primary, st.Epoch, epoch)
	}
	if s := d.slots(t, vip); s["127.0.0.3"] != 4099 {
		t.Fatalf("ring %v, want every slot on the new primary", s)
	}
}

// TestRestartAdoptsTheMaps: a daemon started over the maps of one that
// stopped writes nothing for the same state.
func TestRestartAdoptsTheMaps(t *testing.T) {
	dp := memdp.New("memdp0")
	dir := t.TempDir()
	opts := Options{Iface: "memdp0", StateDir: dir, Socket: filepath.Join(dir, "sluice.sock"), Seed: 1, Resolver: fixedMAC{},
		Datapath: dp, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d, err := New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	vip := "10.0.0.100:80/tcp"
	if _, err := d.core.Change(context.Background(), "test", state.AddVIP(state.VIP{VIP: vip,
		Backends: []state.Backend{{Addr: "10.0.0.2", Check: state.Check{Type: "none"}}, {Addr: "10.0.0.3", Check: state.Check{Type: "none"}}}})); err != nil {
		t.Fatal(err)
	}
	d.shutdown()
	writes := dp.Writes()
	d, err = New(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	defer d.shutdown()
	if n := dp.Writes() - writes; n != 0 {
		t.Errorf("the restarted daemon wrote %d times, want 0", n)
	}
}
