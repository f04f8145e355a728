package loader_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"regexp"
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
	"github.com/sluicelb/sluice/bpf/nocapture"
	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/loader"
	"github.com/sluicelb/sluice/testenv/testutil"
)

// The benchmark's client and VIP, as the data plane holds addresses.
var (
	benchClient4 = rawAddr4(10, 128, 0, 1)
	benchVIP4    = rawAddr4(10, 0, 0, 100)
)

func rawAddr4(a, b, c, d byte) uint32 { return binary.NativeEndian.Uint32([]byte{a, b, c, d}) }

func htons(v uint16) uint16 { return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v)) }

const (
	benchFrames  = 3_000_000
	benchRounds  = 5
	benchClients = 2_000_000
	liveFrames   = 1 << 1 // BPF_F_TEST_XDP_LIVE_FRAMES
)

// xdpMd mirrors struct xdp_md, the context of a test run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

type benchRig struct {
	env      *netlab.Env
	gen, dut *netlab.Host
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
	floorNs   float64 // ns/packet of its floor (0: none)
	// ratioFloorNs is the median over rounds of ns/packet over its floor's.
	ratioFloorNs float64
	maxFloor     float64 // target ratio to the floor (0: reported)
}

func (r benchResult) ratioFloor() float64 { return r.ratioFloorNs }

// missed lists the targets r misses.
func (r benchResult) missed() []string {
	var out []string
	if r.limitNs > 0 && r.ratioNs > r.limitNs {
		out = append(out, fmt.Sprintf("%.2f× the reflector's ns/packet, target ≤ %.1f×", r.ratioNs, r.limitNs))
	}
	if r.minMpps > 0 && r.ratioMpps < r.minMpps {
		out = append(out, fmt.Sprintf("%.0f%% of the reflector's Mpps, target ≥ %.0f%%", 100*r.ratioMpps, 100*r.minMpps))
	}
	if r.maxFloor > 0 && r.ratioFloor() > r.maxFloor {
		out = append(out, fmt.Sprintf("%.2f× its floor's ns/packet, target ≤ %.1f×", r.ratioFloor(), r.maxFloor))
	}
	return out
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
	env, err := netlab.New(context.Background(), nil)
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

// benchConfig is one row of BenchmarkDataplane.
type benchConfig struct {
	name    string
	attach  func() (*ebpf.Program, io.Closer)
	syn     bool
	clients uint32
	id      string  // a floor row's key (floorName), which rows name in floor
	floor   string  // the id of the floor row it is compared with
	limitNs float64 // target: at most this many times the reflector's ns/packet
	minMpps float64 // target: at least this share of the reflector's Mpps
	// maxFloor is the target ratio to the floor's ns/packet (0: reported).
	maxFloor float64
}

// Floor programs' send modes (floor_encap in bpf/floor.c), by the forward
// mode they stand for.
var floorModes = []struct {
	fwd  loader.Forward
	what string
	mode uint32
}{{loader.ForwardDSR, "swap MACs", 0}, {loader.ForwardIPIP, "push IPv4", 1}, {loader.ForwardGUE, "push IPv4+UDP", 2}}

// BenchmarkDataplane measures the reflector, the floor programs and
// sluice side by side in one run; see docs/benchmarks.md for the method.
// With SLUICE_BENCH_DOC set to a markdown file, the table replaces its
// bench-dataplane section, dated.
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
	configs := append([]benchConfig{{name: "reflector (swap MACs, XDP_TX)", attach: func() (*ebpf.Program, io.Closer) {
		return reflect.XdpReflect, r.attach(b, reflect.XdpReflect)
	}}}, r.floorConfigs(b)...)
	configs = selectConfigs(b, append(configs, r.sluiceConfigs(b)...))
	results := runBench(b, r, configs)
	table := benchTable(results)
	fmt.Print(table)
	if out := os.Getenv("SLUICE_BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(table), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if doc := os.Getenv("SLUICE_BENCH_DOC"); doc != "" {
		body := fmt.Sprintf("Run of %s (`sudo make bench`):\n\n%s", time.Now().UTC().Format("2006-01-02 15:04 MST"), table)
		if err := testutil.ReplaceSection(doc, "bench-dataplane", body); err != nil {
			b.Fatal(err)
		}
	}
	for _, res := range results[1:] {
		for _, miss := range res.missed() {
			b.Errorf("%s: %s", res.name, miss)
		}
	}
}

// attach attaches prog natively to the device under test.
func (r *benchRig) attach(b *testing.B, prog *ebpf.Program) io.Closer {
	var l link.Link
	idx, _ := r.dut.Index()
	err := r.dut.Do(func() error {
		var err error
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: idx, Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// floorConfigs are the floor rows: each path's floor in each send mode.
func (r *benchRig) floorConfigs(b *testing.B) []benchConfig {
	var out []benchConfig
	for _, path := range []struct {
		name, prog, what string
		syn              bool
		clients          uint32
	}{
		{"hit", "xdp_floor_hit", "one LRU lookup that hits", false, 0},
		{"SYN", "xdp_floor_syn", "hash, ring read, guarded insert", true, benchClients},
		{"miss", "xdp_floor_miss", "LRU miss, then the SYN floor", false, benchClients},
	} {
		for _, m := range floorModes {
			id := floorName(path.name, m.fwd)
			out = append(out, benchConfig{id: id, name: fmt.Sprintf("%s (%s, %s)", id, path.what, m.what), syn: path.syn,
				clients: path.clients, attach: r.floorAttach(b, path.prog, m.mode, path.name == "hit")})
		}
	}
	return out
}

func floorName(path string, fwd loader.Forward) string {
	return fmt.Sprintf("floor %s %s", path, fwd)
}

// floorAttach loads a floor program in a send mode, with its ring filled
// and, for the hit floor, the benchmark's one flow in its table.
func (r *benchRig) floorAttach(b *testing.B, prog string, mode uint32, hit bool) func() (*ebpf.Program, io.Closer) {
	return func() (*ebpf.Program, io.Closer) {
		spec, err := bpf.LoadFloor()
		if err != nil {
			b.Fatal(err)
		}
		if err := spec.Variables["floor_encap"].Set(mode); err != nil {
			b.Fatal(err)
		}
		var objs bpf.FloorObjects
		if err := spec.LoadAndAssign(&objs, nil); err != nil {
			b.Fatal(err)
		}
		n := objs.FloorRing.MaxEntries()
		keys, vals := make([]uint32, n), make([]bpf.FloorRingChunk, n)
		for i := range keys {
			keys[i] = uint32(i)
			for j := range vals[i].Slot {
				vals[i].Slot[j] = uint16((4*i+j)%16 + 1)
			}
		}
		if _, err := objs.FloorRing.BatchUpdate(keys, vals, nil); err != nil {
			b.Fatal(err)
		}
		if hit {
			k := bpf.FloorFlow4Key{Src: benchClient4, Dst: benchVIP4, Sport: htons(1024), Dport: htons(80), Proto: 6}
			if err := objs.FloorFlows4.Update(k, bpf.FloorFlowState{Backend: 1}, ebpf.UpdateAny); err != nil {
				b.Fatal(err)
			}
		}
		p := map[string]*ebpf.Program{"xdp_floor_hit": objs.XdpFloorHit, "xdp_floor_syn": objs.XdpFloorSyn, "xdp_floor_miss": objs.XdpFloorMiss}[prog]
		l := r.attach(b, p)
		return p, closerFunc(func() error { l.Close(); return objs.Close() })
	}
}

// sluiceConfigs are sluice's rows, each with the floor it is held to.
func (r *benchRig) sluiceConfigs(b *testing.B) []benchConfig {
	var out []benchConfig
	for _, m := range floorModes {
		target := 1.3
		if m.fwd == loader.ForwardGUE {
			target = 0 // reported
		}
		out = append(out,
			benchConfig{name: fmt.Sprintf("sluice %s, table hit (1 flow, ACK)", m.fwd), attach: r.lbAttach(b, m.fwd, 0),
				floor: floorName("hit", m.fwd), maxFloor: target, limitNs: 3.0, minMpps: 0.85},
			benchConfig{name: fmt.Sprintf("sluice %s, SYN from 2M clients, new-flow guard on (default)", m.fwd), attach: r.lbAttach(b, m.fwd, 0),
				syn: true, clients: benchClients, floor: floorName("SYN", m.fwd), maxFloor: target},
			benchConfig{name: fmt.Sprintf("sluice %s, ACK from 2M clients (misses), guard on (default)", m.fwd), attach: r.lbAttach(b, m.fwd, 0),
				clients: benchClients, floor: floorName("miss", m.fwd), maxFloor: target})
		if m.fwd == loader.ForwardGUE {
			out[len(out)-3].limitNs, out[len(out)-3].minMpps = 0, 0
		}
	}
	return append(out,
		benchConfig{name: "sluice ipip, table hit, built without capture (no branch)", attach: r.lbAttachObject(b, loader.ForwardIPIP, 0, nocapture.LoadLb),
			floor: floorName("hit", loader.ForwardIPIP)},
		benchConfig{name: "sluice ipip, SYN from 2M clients, guard off: every SYN inserted", attach: r.lbAttach(b, loader.ForwardIPIP, loader.NoNewFlowLimit), syn: true, clients: benchClients},
		benchConfig{name: "sluice ipip, ACK from 2M clients, guard off: every miss inserted", attach: r.lbAttach(b, loader.ForwardIPIP, loader.NoNewFlowLimit), clients: benchClients})
}

// lbAttach attaches sluice with one VIP of 16 backends on a full ring.
func (r *benchRig) lbAttach(b *testing.B, fwd loader.Forward, limit uint32) func() (*ebpf.Program, io.Closer) {
	return r.lbAttachObject(b, fwd, limit, nil)
}

// lbAttachObject is lbAttach with a variant build of the program.
func (r *benchRig) lbAttachObject(b *testing.B, fwd loader.Forward, limit uint32, object func() (*ebpf.CollectionSpec, error)) func() (*ebpf.Program, io.Closer) {
	return func() (*ebpf.Program, io.Closer) {
		d, err := r.dut.AttachLB(context.Background(), loader.Options{Mode: loader.ModeNative, FlowTableSize: benchFlowTable(), Object: object})
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

// selectConfigs keeps, with SLUICE_BENCH_ONLY set to a regular
// expression, the reflector, the rows whose names match and their floors.
func selectConfigs(b *testing.B, configs []benchConfig) []benchConfig {
	only := os.Getenv("SLUICE_BENCH_ONLY")
	if only == "" {
		return configs
	}
	re, err := regexp.Compile(only)
	if err != nil {
		b.Fatalf("SLUICE_BENCH_ONLY: %v", err)
	}
	keep := map[string]bool{configs[0].name: true}
	for _, c := range configs {
		if re.MatchString(c.name) {
			keep[c.name], keep[c.floor] = true, true
		}
	}
	var out []benchConfig
	for _, c := range configs {
		if keep[c.name] || c.id != "" && keep[c.id] {
			out = append(out, c)
		}
	}
	return out
}

// runBench measures every configuration in interleaved rounds, so that
// machine noise hits them alike, each sluice row right after its floor.
// Ratios are taken within a round, then their median over the rounds.
func runBench(b *testing.B, r *benchRig, configs []benchConfig) []benchResult {
	floorOf := make([]int, len(configs))
	for i, c := range configs {
		floorOf[i] = -1
		for j, f := range configs {
			if c.floor != "" && f.id == c.floor {
				floorOf[i] = j
			}
		}
		if c.floor != "" && floorOf[i] < 0 {
			b.Fatalf("%s: no floor row %q", c.name, c.floor)
		}
	}
	mpps := make([][]float64, len(configs))
	nsp := make([][]float64, len(configs))
	for round := 0; round < benchRounds; round++ {
		for _, i := range measureOrder(floorOf) {
			c := configs[i]
			prog, closer := c.attach()
			tmpl := r.template(b, c.syn)
			tmpl.Flows = c.clients
			m, n := r.measure(b, prog, tmpl)
			closer.Close()
			mpps[i] = append(mpps[i], m)
			nsp[i] = append(nsp[i], n)
		}
	}
	ratio := func(x, y []float64) float64 {
		rs := make([]float64, len(x))
		for k := range x {
			rs[k] = x[k] / y[k]
		}
		return median(rs)
	}
	results := make([]benchResult, len(configs))
	for i, c := range configs {
		results[i] = benchResult{name: c.name, mpps: median(mpps[i]), nsPerPkt: median(nsp[i]),
			ratioNs: ratio(nsp[i], nsp[0]), ratioMpps: ratio(mpps[i], mpps[0]),
			limitNs: c.limitNs, minMpps: c.minMpps, maxFloor: c.maxFloor}
		if f := floorOf[i]; f >= 0 {
			results[i].floorNs, results[i].ratioFloorNs = median(nsp[f]), ratio(nsp[i], nsp[f])
		}
	}
	return results
}

// measureOrder is the order of one round: the reflector, then each row
// that has a floor right after that floor, then the rest.
func measureOrder(floorOf []int) []int {
	done := make([]bool, len(floorOf))
	order := []int{0}
	done[0] = true
	add := func(i int) {
		if !done[i] {
			done[i] = true
			order = append(order, i)
		}
	}
	for i, f := range floorOf {
		if f >= 0 {
			add(f)
			add(i)
		}
	}
	for i := range floorOf {
		add(i)
	}
	return order
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

func benchTable(rs []benchResult) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "| configuration | Mpps | ns/packet | ns vs reflector | Mpps vs reflector | ns vs floor | target |\n")
	fmt.Fprintf(&sb, "|---|---:|---:|---:|---:|---:|---|\n")
	for _, r := range rs {
		floor := "–"
		if r.floorNs > 0 {
			floor = fmt.Sprintf("%.2f×", r.ratioFloor())
		}
		fmt.Fprintf(&sb, "| %s | %.2f | %.1f | %.2f× | %.0f%% | %s | %s |\n", r.name, r.mpps, r.nsPerPkt, r.ratioNs, 100*r.ratioMpps, floor, r.target())
	}
	return sb.String()
}

// target describes r's targets and whether they were met.
func (r benchResult) target() string {
	var parts []string
	if r.maxFloor > 0 {
		parts = append(parts, fmt.Sprintf("≤ %.1f× floor", r.maxFloor))
	}
	if r.limitNs > 0 {
		parts = append(parts, fmt.Sprintf("≤ %.1f× reflector ns", r.limitNs))
	}
	if r.minMpps > 0 {
		parts = append(parts, fmt.Sprintf("≥ %.0f%% Mpps", 100*r.minMpps))
	}
	switch {
	case len(parts) == 0 && r.floorNs == 0 && r.ratioNs <= 1.001:
		return "baseline"
	case len(parts) == 0:
		return "reported"
	case len(r.missed()) == 0:
		return strings.Join(parts, ", ") + ": met"
	}
	return strings.Join(parts, ", ") + ": MISSED"
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
