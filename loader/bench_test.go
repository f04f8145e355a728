package loader_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"golang.org/x/sys/unix"

	"github.com/sluicelb/sluice/bpf"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv"
	"github.com/sluicelb/sluice/testenv/testutil"
)

const (
	benchFrames  = 3_000_000
	benchRounds  = 3
	benchClients = 2_000_000
	liveFrames   = 1 << 1 // BPF_F_TEST_XDP_LIVE_FRAMES
)

// xdpMd mirrors struct xdp_md, the context of a test run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

type benchRig struct {
	env      *testenv.Env
	gen, dut *testenv.Host
	genIdx   int
	genObjs  bpf.ToolsObjects
	sinkObjs bpf.ToolsObjects
	sink     link.Link
}

type benchResult struct {
	name      string
	mpps      float64
	nsPerPkt  float64
	ratioNs   float64
	ratioMpps float64
	limitNs   float64 // 0: no target
	minMpps   float64
}

// template builds the 128-byte frame the generator writes on every packet.
func (r *benchRig) template(b *testing.B, syn bool) bpf.ToolsGenTemplate {
	eth := &layers.Ethernet{SrcMAC: r.gen.MAC, DstMAC: r.dut.MAC, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.IP{10, 128, 0, 1}, DstIP: net.IP{10, 0, 0, 100}}
	tcp := &layers.TCP{SrcPort: 1024, DstPort: 80, SYN: syn, ACK: !syn, Window: 512}
	_ = tcp.SetNetworkLayerForChecksum(ip)
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, tcp, gopacket.Payload(make([]byte, 128-54))); err != nil {
		b.Fatal(err)
	}
	var t bpf.ToolsGenTemplate
	if n := copy(t.Data[:], buf.Bytes()); n != 128 {
		b.Fatalf("template is %d bytes", n)
	}
	t.AddrOff, t.PortOff = 26, 34 // IPv4 source, TCP source port
	t.PortShift = 6               // 64 ports per client address
	return t
}

func newBenchRig(b *testing.B) *benchRig {
	testutil.Require(b)
	env, err := testenv.New(context.Background(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { env.Close() })
	r := &benchRig{env: env}
	if r.gen, r.dut, err = env.AddVethPair("gen", "dut", 1600); err != nil {
		b.Fatal(err)
	}
	if r.genIdx, err = r.gen.Index(); err != nil {
		b.Fatal(err)
	}
	if err := bpf.LoadToolsObjects(&r.genObjs, nil); err != nil {
		b.Fatal(err)
	}
	if err := bpf.LoadToolsObjects(&r.sinkObjs, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { r.genObjs.Close(); r.sinkObjs.Close() })
	// The sink counts what the program under test sends back (and is what
	// makes the generator's veth receive XDP_TX frames at all).
	err = r.gen.Do(func() error {
		r.sink, err = link.AttachXDP(link.XDPOptions{Program: r.sinkObjs.XdpSink, Interface: r.genIdx, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	env.OnClose(r.sink.Close)
	return r
}

func sumTool(b *testing.B, m *ebpf.Map) uint64 {
	var per []bpf.ToolsCounter
	if err := m.Lookup(uint32(0), &per); err != nil {
		b.Fatal(err)
	}
	var n uint64
	for _, c := range per {
		n += c.Packets
	}
	return n
}

// measure runs the generator with tmpl against prog (attached to dut) and
// returns Mpps at the sink and ns/packet of prog.
func (r *benchRig) measure(b *testing.B, prog *ebpf.Program, tmpl bpf.ToolsGenTemplate) (float64, float64) {
	if err := r.genObjs.GenTmpl.Update(uint32(0), tmpl, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
	st0, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	sink0 := sumTool(b, r.sinkObjs.ToolStats)
	var elapsed time.Duration
	err = r.gen.Do(func() error {
		start := time.Now()
		_, err := r.genObjs.XdpGen.Run(&ebpf.RunOptions{
			Data: make([]byte, 128), Repeat: benchFrames, Flags: liveFrames,
			Context: xdpMd{DataEnd: 128, IngressIfindex: uint32(r.genIdx)},
		})
		elapsed = time.Since(start)
		return err
	})
	if err != nil {
		b.Fatalf("generator: %v", err)
	}
	// Let frames still in flight arrive: wait until the sink stops counting.
	last := sumTool(b, r.sinkObjs.ToolStats)
	for {
		time.Sleep(20 * time.Millisecond)
		now := sumTool(b, r.sinkObjs.ToolStats)
		if now == last {
			break
		}
		last = now
	}
	st1, err := prog.Stats()
	if err != nil {
		b.Fatal(err)
	}
	runs := st1.RunCount - st0.RunCount
	if runs == 0 {
		b.Fatal("program under test never ran")
	}
	ns := float64(st1.Runtime-st0.Runtime) / float64(runs)
	if os.Getenv("SLUICE_BENCH_DEBUG") != "" {
		b.Logf("flows=%d elapsed=%v dut runs=%d sink=%d", tmpl.Flows, elapsed, runs, last-sink0)
	}
	return float64(last-sink0) / elapsed.Seconds() / 1e6, ns
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkDataplane measures the reflector and sluice side by side in one
// run; see docs/benchmarks.md for the method.
func BenchmarkDataplane(b *testing.B) {
	r := newBenchRig(b)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable bpf stats: %v", err)
	}
	defer stats.Close()

	var reflect bpf.ToolsObjects
	if err := bpf.LoadToolsObjects(&reflect, nil); err != nil {
		b.Fatal(err)
	}
	defer reflect.Close()

	type config struct {
		name    string
		attach  func() (*ebpf.Program, io.Closer)
		syn     bool
		clients uint32
		limitNs float64
		minMpps float64
	}
	attachReflector := func() (*ebpf.Program, io.Closer) {
		var l link.Link
		idx, _ := r.dut.Index()
		err := r.dut.Do(func() error {
			var err error
			l, err = link.AttachXDP(link.XDPOptions{Program: reflect.XdpReflect, Interface: idx, Flags: link.XDPDriverMode})
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		return reflect.XdpReflect, l
	}
	attachLB := func(fwd loader.Forward, limit uint32) func() (*ebpf.Program, io.Closer) {
		return func() (*ebpf.Program, io.Closer) {
			d, err := r.dut.AttachLB(context.Background(), loader.Options{Mode: loader.ModeNative, FlowTableSize: benchFlowTable()})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := d.SetConfig(loader.Config{Seed: 1, MAC: r.dut.MAC, NewFlowLimit: limit}); err != nil {
				b.Fatal(err)
			}
			vip := loader.VIPKey{Addr: netip.MustParseAddr("10.0.0.100"), Port: 80, Proto: loader.TCP}
			if _, err := d.SetVIP(vip, loader.VIP{ID: 0, Forward: fwd}); err != nil {
				b.Fatal(err)
			}
			ring := make([]uint32, 65537)
			for i := 1; i <= 16; i++ {
				be := loader.Backend{Addr: netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), Flags: loader.BackendUsable, MAC: r.gen.MAC}
				if _, err := d.SetBackend(uint32(i), be); err != nil {
					b.Fatal(err)
				}
			}
			for i := range ring {
				ring[i] = uint32(i%16) + 1
			}
			if _, err := d.ReplaceRing(vip, ring); err != nil {
				b.Fatal(err)
			}
			return d.Program(), closerFunc(d.Detach)
		}
	}
	configs := []config{
		{name: "reflector (swap MACs, XDP_TX)", attach: attachReflector},
		{name: "sluice dsr, table hit (1 flow, ACK)", attach: attachLB(loader.ForwardDSR, 0), limitNs: 3.0, minMpps: 0.80},
		{name: "sluice ipip, table hit (1 flow, ACK)", attach: attachLB(loader.ForwardIPIP, 0), limitNs: 3.0, minMpps: 0.80},
		{name: "sluice ipip, SYN from 2M clients, new-flow guard on (default)", attach: attachLB(loader.ForwardIPIP, 0), syn: true, clients: benchClients, limitNs: 3.5},
		{name: "sluice ipip, ACK from 2M clients (misses), guard on (default)", attach: attachLB(loader.ForwardIPIP, 0), clients: benchClients, limitNs: 4.5},
		{name: "sluice ipip, SYN from 2M clients, guard off: every SYN inserted", attach: attachLB(loader.ForwardIPIP, loader.NoNewFlowLimit), syn: true, clients: benchClients},
		{name: "sluice ipip, ACK from 2M clients, guard off: every miss inserted", attach: attachLB(loader.ForwardIPIP, loader.NoNewFlowLimit), clients: benchClients},
	}
	results := make([]benchResult, len(configs))
	mpps := make([][]float64, len(configs))
	nsp := make([][]float64, len(configs))
	// Rounds interleave the configurations so that machine noise hits
	// all of them alike.
	for round := 0; round < benchRounds; round++ {
		for i, c := range configs {
			prog, closer := c.attach()
			tmpl := r.template(b, c.syn)
			tmpl.Flows = c.clients
			m, n := r.measure(b, prog, tmpl)
			closer.Close()
			mpps[i] = append(mpps[i], m)
			nsp[i] = append(nsp[i], n)
		}
	}
	for i, c := range configs {
		results[i] = benchResult{name: c.name, mpps: median(mpps[i]), nsPerPkt: median(nsp[i]), limitNs: c.limitNs, minMpps: c.minMpps}
		results[i].ratioNs = results[i].nsPerPkt / results[0].nsPerPkt
		results[i].ratioMpps = results[i].mpps / results[0].mpps
	}
	table := benchTable(results)
	fmt.Print(table)
	if out := os.Getenv("SLUICE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, res := range results[1:] {
		if res.limitNs > 0 && res.ratioNs > res.limitNs {
			b.Errorf("%s: %.2f× the reflector's ns/packet, target ≤ %.1f×", res.name, res.ratioNs, res.limitNs)
		}
		if res.minMpps > 0 && res.ratioMpps < res.minMpps {
			b.Errorf("%s: %.0f%% of the reflector's Mpps, target ≥ %.0f%%", res.name, 100*res.ratioMpps, 100*res.minMpps)
		}
	}
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func benchTable(rs []benchResult) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "| configuration | Mpps | ns/packet | ns vs reflector | Mpps vs reflector | target |\n")
	fmt.Fprintf(&sb, "|---|---:|---:|---:|---:|---|\n")
	for _, r := range rs {
		target := "baseline"
		if r.ratioNs > 1.001 {
			target = "reported"
		}
		if r.limitNs > 0 {
			target = fmt.Sprintf("≤ %.1f× ns", r.limitNs)
			ok := r.ratioNs <= r.limitNs
			if r.minMpps > 0 {
				target += fmt.Sprintf(", ≥ %.0f%% Mpps", 100*r.minMpps)
				ok = ok && r.ratioMpps >= r.minMpps
			}
			if ok {
				target += ": met"
			} else {
				target += ": MISSED"
			}
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.1f | %.2f× | %.0f%% | %s |\n", r.name, r.mpps, r.nsPerPkt, r.ratioNs, 100*r.ratioMpps, target)
	}
	return sb.String()
}

// benchFlowTable is the connection table size under test (default: the
// data plane's default), overridable with SLUICE_BENCH_FLOWS.
func benchFlowTable() uint32 {
	if v := os.Getenv("SLUICE_BENCH_FLOWS"); v != "" {
		var n uint32
		fmt.Sscan(v, &n)
		return n
	}
	return 0
}
