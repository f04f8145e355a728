package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
)

// soakWatch runs the soak's traffic and watchers until stop.
type soakWatch struct {
	s    *soak
	quit chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	live    map[int]liveConn
	echoes  int
	excused int
	broke   int
	slices  []wrkSlice
	nodes   [2]nodeSamples
	maxDual time.Duration
}

type liveConn struct {
	conn
	opened time.Time
}

// wrkSlice is one second of wrk.
type wrkSlice struct {
	from, to         time.Time
	requests, errors int
	maxLatency       time.Duration // the slowest request wrk saw complete
}

// nodeSamples are one node's daemon's resource figures over the soak.
type nodeSamples struct {
	firstRSS, maxRSS, lastRSS float64 // bytes
	firstG, maxG, lastG       float64 // goroutines
	n                         int
}

const soakConns = 200

func (s *soak) watch() *soakWatch {
	w := &soakWatch{s: s, quit: make(chan struct{}), live: map[int]liveConn{}}
	for i := range soakConns {
		w.wg.Add(1)
		go w.keep(i)
	}
	w.wg.Add(2)
	go w.wrk()
	go w.sample()
	return w
}

func (w *soakWatch) stopped() bool {
	select {
	case <-w.quit:
		return true
	default:
		return false
	}
}

// keep holds long-lived connection i open, echoing once a second; when it
// breaks, the break must be excused by a fault of its backend, and it is
// opened again.
func (w *soakWatch) keep(i int) {
	defer w.wg.Done()
	for !w.stopped() {
		c, err := dialVIP(w.s.t, w.s.lp.lab, vipAP)
		if err != nil {
			time.Sleep(100 * time.Millisecond) // a retry pace, during a fault
			continue
		}
		lc := liveConn{conn: c, opened: time.Now()}
		w.mu.Lock()
		w.live[i] = lc
		w.mu.Unlock()
		err = w.talk(lc)
		if err == nil {
			return // stopped, lc stays open for the final check
		}
		c.c.Close()
		w.mu.Lock()
		delete(w.live, i)
		w.mu.Unlock()
		w.judge(i, lc, err)
	}
}

func (w *soakWatch) talk(c liveConn) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-w.quit:
			return nil
		case <-tick.C:
		}
		// A healthy connection may wait out TCP's retransmission backoff
		// across a takeover: 15 s tells that from a broken one.
		if err := c.echoWithin(15 * time.Second); err != nil {
			return err
		}
		w.mu.Lock()
		w.echoes++
		w.mu.Unlock()
	}
}

func (w *soakWatch) judge(i int, c liveConn, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.s.excused(c.backend, c.opened, time.Now()) {
		w.excused++
		return
	}
	w.broke++
	w.s.violate("long-lived connection #%d to %s, a healthy backend, broke: %v", i, c.backend, err)
}

var (
	wrkRequests = regexp.MustCompile(`(\d+) requests in`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkStatus   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	wrkLatency  = regexp.MustCompile(`Latency\s+\S+\s+\S+\s+(\S+)`) // avg, stdev, max
)

// wrk runs wrk from the client against vipHTTP in one-second slices, so
// that each failure can be placed inside or outside a fault window.
func (w *soakWatch) wrk() {
	defer w.wg.Done()
	for !w.stopped() {
		sl, err := wrkSecond(w.s.lp.lab.Client)
		if err != nil {
			w.s.violate("%v", err)
			return
		}
		w.mu.Lock()
		w.slices = append(w.slices, sl)
		w.mu.Unlock()
	}
}

// wrkSecond runs one second of wrk from client against the HTTP VIP.
func wrkSecond(client *netlab.Host) (wrkSlice, error) {
	from := time.Now()
	out, err := client.Command(context.Background(), "wrk", "-t1", "-c8", "-d1s", "--timeout", "1s",
		"http://"+netlab.LabVIP4.String()+"/").CombinedOutput()
	sl := wrkSlice{from: from, to: time.Now()}
	m := wrkRequests.FindSubmatch(out)
	switch {
	case m != nil:
		sl.requests = atoi(m[1])
	case bytes.Contains(out, []byte("unable to connect")):
		// wrk gives up at once when its first connection is refused
		// (a killed backend answers with a reset): one failed
		// request, judged by its slice's window like any.
		sl.errors = 1
	default:
		return sl, fmt.Errorf("wrk: %v\n%s", err, out)
	}
	if m := wrkSocket.FindSubmatch(out); m != nil {
		sl.errors = atoi(m[1]) + atoi(m[2]) + atoi(m[3]) + atoi(m[4])
	}
	if m := wrkStatus.FindSubmatch(out); m != nil {
		sl.errors += atoi(m[1])
	}
	if m := wrkLatency.FindSubmatch(out); m != nil {
		sl.maxLatency, _ = time.ParseDuration(string(m[1]))
	}
	return sl, nil
}

func atoi(b []byte) int {
	n, _ := strconv.Atoi(string(b))
	return n
}

// sample scrapes both daemons every 100 ms: their roles (both master for
// longer than soakDual is a violation), RSS and goroutines.
func (w *soakWatch) sample() {
	defer w.wg.Done()
	var hc [2]*http.Client
	for i, h := range w.s.lp.hosts {
		hc[i] = newScraper(h).hc
	}
	var dualSince time.Time
	reported := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !w.stopped() {
		now := <-tick.C
		masters := 0
		for i := range hc {
			if w.scrape(i, hc[i]) {
				masters++
			}
		}
		if masters < 2 {
			dualSince, reported = time.Time{}, false
			continue
		}
		if dualSince.IsZero() {
			dualSince = now
		}
		d := now.Sub(dualSince)
		w.mu.Lock()
		w.maxDual = max(w.maxDual, d)
		w.mu.Unlock()
		if d > soakDual && !reported {
			reported = true
			w.s.violate("both nodes master for %v (bound %v)", d, soakDual)
		}
	}
}

// scrape reads node i's metrics and says whether it is master; a node
// that does not answer (killed) is not.
func (w *soakWatch) scrape(i int, hc *http.Client) bool {
	resp, err := hc.Get("http://127.0.0.1:9642/metrics")
	if err != nil {
		return false
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false
	}
	one := func(name string, labels ...string) float64 {
		if vs := metricSeries(string(body), name, labels...); len(vs) > 0 {
			return vs[0]
		}
		return 0
	}
	rss, g := one("process_resident_memory_bytes"), one("go_goroutines")
	w.mu.Lock()
	n := &w.nodes[i]
	if n.n == 0 {
		n.firstRSS, n.firstG = rss, g
	}
	n.n++
	n.maxRSS, n.maxG = max(n.maxRSS, rss), max(n.maxG, g)
	n.lastRSS, n.lastG = rss, g
	w.mu.Unlock()
	return one("sluice_ha_role", `role="master"`) == 1
}

// stop ends the traffic and the watchers, and checks that every
// long-lived connection still open echoes.
func (w *soakWatch) stop() {
	close(w.quit)
	w.wg.Wait()
	// A connection whose backend met a fault while it was open (the
	// last fault may have ended just now, b4 deleted, before its watcher
	// saw the break) may be broken; the others must echo.
	var cs []conn
	now := time.Now()
	for _, c := range w.live {
		if w.s.excused(c.backend, c.opened, now) {
			continue
		}
		cs = append(cs, c.conn)
	}
	if n, why := broken(cs); n != 0 {
		for reason := range why {
			w.s.violate("at the end, a long-lived connection does not echo: %s", reason)
		}
	}
	for _, c := range cs {
		c.c.Close()
	}
}

// bounded checks the daemons' resources: RSS within 64 MiB of its first
// sample and goroutines within twice theirs plus 50, on each node.
func (w *soakWatch) bounded() {
	for i, n := range w.nodes {
		if n.n == 0 {
			w.s.violate("node %d: never scraped", i)
			continue
		}
		if n.maxRSS > n.firstRSS+64<<20 {
			w.s.violate("node %d: RSS grew from %.1f to %.1f MiB", i, n.firstRSS/(1<<20), n.maxRSS/(1<<20))
		}
		if n.maxG > 2*n.firstG+50 {
			w.s.violate("node %d: goroutines grew from %.0f to %.0f", i, n.firstG, n.maxG)
		}
	}
}

// report prints what the soak did.
func (s *soak) report(w *soakWatch) {
	var kinds []string
	total := 0
	for k, n := range s.kinds {
		kinds = append(kinds, fmt.Sprintf("%s %d", k, n))
		total += n
	}
	sort.Strings(kinds)
	var req, in, out, inReq, outReq int
	for _, sl := range w.slices {
		req += sl.requests
		if s.inside(sl.from, sl.to) {
			in += sl.errors
			inReq += sl.requests
		} else {
			out += sl.errors
			outReq += sl.requests
		}
	}
	s.t.Logf("faults: %d (%s)", total, strings.Join(kinds, ", "))
	s.t.Logf("wrk: %d requests in %d one-second slices; failed: %d inside fault windows (of %d requests there), %d outside (of %d)", req, len(w.slices), in, inReq, out, outReq)
	s.t.Logf("long-lived connections: %d echoes; %d broke with their backend's fault (reopened), %d broke on a healthy backend", w.echoes, w.excused, w.broke)
	s.t.Logf("longest a dead backend still got VIP traffic: %v (bound %v); longest dual master: %v (bound %v)", s.reach, soakDetect, w.maxDual, soakDual)
	for i, n := range w.nodes {
		s.t.Logf("node %d: RSS %.1f → max %.1f → %.1f MiB, goroutines %.0f → max %.0f → %.0f (%d samples)", i,
			n.firstRSS/(1<<20), n.maxRSS/(1<<20), n.lastRSS/(1<<20), n.firstG, n.maxG, n.lastG, n.n)
	}
	if out > 0 {
		s.violate("%d wrk requests failed outside any fault window", out)
	}
}
