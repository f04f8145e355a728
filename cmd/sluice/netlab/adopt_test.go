package netlab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// helperConfig is what the helper process needs to configure the LB.
type helperConfig struct {
	NS       string
	Iface    string
	PinRoot  string
	MAC      string
	Backends []helperBackend
}

type helperBackend struct {
	Addr string
	MAC  string
}

type helperResult struct {
	Adopted bool
	Writes  int
}

// TestAdoptHelper is not a test: it is the separate process that attaches
// or adopts the data plane for TestAdoptAcrossProcesses.
func TestAdoptHelper(t *testing.T) {
	raw := os.Getenv("SLUICE_ADOPT_HELPER")
	if raw == "" {
		t.Skip("helper process only")
	}
	var cfg helperConfig
	if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	runtime.LockOSThread()
	ns, err := netns.GetFromName(cfg.NS)
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Set(ns); err != nil {
		t.Fatal(err)
	}
	d, err := loader.Load(context.Background(), loader.Options{Iface: cfg.Iface, Mode: loader.ModeNative, PinRoot: cfg.PinRoot, FlowTableSize: 65536})
	if err != nil {
		t.Fatal(err)
	}
	writes, err := configureLB(d, cfg)
	if err != nil {
		t.Fatal(err)
	}
	out, _ := json.Marshal(helperResult{Adopted: d.Adopted(), Writes: writes})
	fmt.Printf("READY %s\n", out)
	// Exit when told to: the data plane must keep forwarding without us.
	_, _ = io.Copy(io.Discard, os.Stdin)
	d.Close()
	os.Exit(0)
}

func configureLB(d *loader.Datapath, cfg helperConfig) (int, error) {
	writes := 0
	count := func(changed bool, err error) error {
		if changed {
			writes++
		}
		return err
	}
	mac, _ := net.ParseMAC(cfg.MAC)
	if err := count(d.SetConfig(loader.Config{Seed: 42, MAC: mac})); err != nil {
		return 0, err
	}
	for id, k := range []loader.VIPKey{{Addr: LabVIP4, Port: 53, Proto: loader.UDP}, {Addr: LabVIP4, Port: 80, Proto: loader.TCP}} {
		if err := count(d.SetVIP(k, loader.VIP{ID: uint32(id), Forward: loader.ForwardIPIP})); err != nil {
			return 0, err
		}
		ring := make([]uint32, 4099)
		for i, b := range cfg.Backends {
			idx := uint32(id*len(cfg.Backends) + i + 1)
			bmac, _ := net.ParseMAC(b.MAC)
			if err := count(d.SetBackend(idx, loader.Backend{Addr: netip.MustParseAddr(b.Addr), VIPID: uint32(id), Flags: loader.BackendUsable, MAC: bmac})); err != nil {
				return 0, err
			}
		}
		for i := range ring {
			ring[i] = uint32(id*len(cfg.Backends) + i%len(cfg.Backends) + 1)
		}
		if err := count(d.ReplaceRing(k, ring)); err != nil {
			return 0, err
		}
	}
	return writes, nil
}

type helperProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	res   helperResult
}

func startHelper(t *testing.T, cfg helperConfig) *helperProc {
	t.Helper()
	raw, _ := json.Marshal(cfg)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAdoptHelper$", "-test.v")
	cmd.Env = append(os.Environ(), "SLUICE_ADOPT_HELPER="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
			p := &helperProc{cmd: cmd, stdin: stdin}
			if err := json.Unmarshal([]byte(rest), &p.res); err != nil {
				t.Fatal(err)
			}
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return p
		}
	}
	t.Fatalf("helper exited before it was ready: %v", cmd.Wait())
	return nil
}

func (p *helperProc) exit(t *testing.T) {
	t.Helper()
	p.stdin.Close()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}
}

// prober sends UDP queries to the VIP one after another and counts answers;
// any query left unanswered for 500ms is a loss.
type prober struct {
	ok, lost atomic.Int64
	stop     chan struct{}
	done     chan struct{}
}

func startProber(t *testing.T, lab *Lab) *prober {
	t.Helper()
	c, err := lab.Client.Dial(context.Background(), "udp4", "", netip.AddrPortFrom(LabVIP4, 53).String())
	if err != nil {
		t.Fatal(err)
	}
	p := &prober{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		defer c.Close()
		buf := make([]byte, 64)
		for {
			select {
			case <-p.stop:
				return
			default:
			}
			if _, err := c.Write([]byte("q")); err != nil {
				p.lost.Add(1)
				continue
			}
			c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
			if _, err := c.Read(buf); err != nil {
				p.lost.Add(1)
				continue
			}
			p.ok.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	return p
}

// waitAnswers blocks until n more queries were answered.
func (p *prober) waitAnswers(t *testing.T, n int64) {
	t.Helper()
	testutil.WaitCount(t, p.ok.Load, p.ok.Load()+n, 20*time.Second, func() string {
		return fmt.Sprintf("traffic stalled: %d answered, %d lost", p.ok.Load(), p.lost.Load())
	})
}

// TestAdoptAcrossProcesses: one process attaches and exits, forwarding goes
// on; a second process adopts the pinned state without rewriting any map;
// UDP probes through both events lose nothing.
func TestAdoptAcrossProcesses(t *testing.T) {
	testutil.Require(t)
	lab, err := NewLab(context.Background(), nil, LabOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer lab.Close()
	cfg := helperConfig{NS: lab.LB.NSName(), Iface: lab.LB.Link, PinRoot: lab.PinRoot(), MAC: lab.LB.MAC.String()}
	for _, b := range lab.Backends {
		cfg.Backends = append(cfg.Backends, helperBackend{Addr: b.Addr.Addr().String(), MAC: b.MAC.String()})
	}

	first := startHelper(t, cfg)
	if first.res.Adopted || first.res.Writes == 0 {
		t.Fatalf("first process: %+v, want a fresh attach that wrote the maps", first.res)
	}
	p := startProber(t, lab)
	p.waitAnswers(t, 200)
	first.exit(t)
	p.waitAnswers(t, 200) // forwarding without any sluice process

	second := startHelper(t, cfg)
	if !second.res.Adopted || second.res.Writes != 0 {
		t.Fatalf("second process: %+v, want adoption with 0 map writes", second.res)
	}
	p.waitAnswers(t, 200)
	second.exit(t)
	p.waitAnswers(t, 200)
	close(p.stop)
	<-p.done
	t.Logf("probes answered %d, lost %d", p.ok.Load(), p.lost.Load())
	if p.lost.Load() != 0 {
		t.Fatalf("%d probes lost across exit and adoption", p.lost.Load())
	}
}
