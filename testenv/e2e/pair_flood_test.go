package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/testenv"
)

// rssMiB is a process's resident set size.
func rssMiB(t testing.TB, pid int) float64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1024
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// slowUpload opens a sync request that claims a 64 MiB body (or, chunked,
// claims nothing) and trickles it, until the server hangs up or stop.
func slowUpload(ctx context.Context, h *testenv.Host, addr string, chunked bool, stop <-chan struct{}) (closedBy string) {
	c, err := h.Dial(ctx, "tcp", "", addr)
	if err != nil {
		return "refused at connect"
	}
	defer c.Close()
	head := "POST /ha/state HTTP/1.1\r\nHost: peer\r\nX-Sluice-Node: mallory\r\nX-Sluice-Boot: 1\r\nX-Sluice-Seq: 1\r\nX-Sluice-Mac: 00\r\n"
	if chunked {
		head += "Transfer-Encoding: chunked\r\n\r\n"
	} else {
		head += "Content-Length: 67108864\r\n\r\n"
	}
	if _, err := c.Write([]byte(head)); err != nil {
		return "server"
	}
	chunk := []byte(strings.Repeat("x", 1024))
	if chunked {
		chunk = append([]byte("400\r\n"), append(chunk, "\r\n"...)...)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-stop:
			return "client"
		case <-tick.C:
		}
		c.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := c.Write(chunk); err != nil {
			return "server"
		}
	}
}

// TestLBPairSyncFlood: 100 slow 64 MiB uploads to the master's sync port
// from a host that is not a peer, and 100 from the peer's own address with
// no key, for 10 s. The master's RSS grows by at most 32 MiB, no takeover
// happens (adverts are UDP and keep flowing), the non-peers are cut at
// once, and every refusal is counted.
func TestLBPairSyncFlood(t *testing.T) {
	lp := newLBPair(t, "100ms", 1, 1)
	m := lp.nodes[0]
	pid := m.cmd.Process.Pid
	before := rssMiB(t, pid)
	sc := newScraper(lp.hosts[0])
	trans := sc.value(t, "sluice_ha_transitions_total", `to="master"`) + sc.value(t, "sluice_ha_transitions_total", `to="backup"`)
	addr := fmt.Sprintf("%s:9643", lp.hosts[0].Addr.Addr())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	closed := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 200 {
		from := lp.lab.Client // not a peer
		if i%2 == 1 {
			from = lp.hosts[1] // the peer's address, no key
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			by := slowUpload(ctx, from, addr, i%4 >= 2, stop)
			mu.Lock()
			closed[from.Name+" closed by "+by]++
			mu.Unlock()
		}()
	}
	peak := before
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		peak = max(peak, rssMiB(t, pid))
		time.Sleep(100 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	t.Logf("master RSS %.1f MiB before, %.1f MiB at most during the flood; connections: %v", before, peak, closed)
	if peak-before > 32 {
		t.Errorf("RSS grew by %.1f MiB under the flood, want at most 32", peak-before)
	}
	if closed[lp.lab.Client.Name+" closed by client"] != 0 {
		t.Errorf("%d uploads from a non-peer were still open after 10 s", closed[lp.lab.Client.Name+" closed by client"])
	}
	if got := sc.value(t, "sluice_ha_transitions_total", `to="master"`) + sc.value(t, "sluice_ha_transitions_total", `to="backup"`); got != trans {
		t.Errorf("role transitions %v -> %v during the flood", trans, got)
	}
	waitRole(t, m, "master")
	refused, by := 0.0, map[string]float64{}
	for _, r := range []string{"unknown-peer", "busy", "too-large", "read", "mac", "malformed"} {
		by[r] = sc.value(t, "sluice_ha_sync_refused_total", `reason="`+r+`"`)
		refused += by[r]
	}
	t.Logf("sluice_ha_sync_refused_total: %v", by)
	if un := sc.value(t, "sluice_ha_sync_refused_total", `reason="unknown-peer"`); un < 100 || refused < 200 {
		t.Errorf("refusals counted: %v unknown-peer, %v in all, want ≥ 100 and ≥ 200", un, refused)
	}
	// The pair still syncs: a change on the master reaches the backup.
	m.mustCLI(t, "vip", "add", "10.77.1.100:8080/tcp")
	rev := m.status(t).Revision
	lp.nodes[1].waitStatus(t, "the backup has the change", func(s api.Status) bool { return s.Revision == rev })
}
