package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sluicelb/sluice/cmd/sluice/netlab"
	"github.com/sluicelb/sluice/control/api"
)

// soakFault injects one fault, holds it, restores it, and returns what
// ends its window once the pair has recovered.
type soakFault struct {
	kind string
	run  func() (end func())
}

func (s *soak) faults() []soakFault {
	return []soakFault{
		{"kill backend", s.killBackend},
		{"blackhole backend", s.blackholeBackend},
		{"kill -9 master daemon", s.killMaster},
		{"flap master link", s.flapMaster},
		{"backup save and restore", s.backupRoundTrip},
		{"drain or undrain", s.drainChurn},
		{"add or delete b4", s.addDelChurn},
		{"spoofed advert burst", s.spoofBurst},
	}
}

// holdFor is how long a fault lasts: longer than soakDetect, so that a
// dead backend's traffic is watched past its bound.
func (s *soak) holdFor() time.Duration {
	return soakDetect + 500*time.Millisecond + time.Duration(s.rng.Int64N(int64(1500*time.Millisecond)))
}

// victim is one of b1–b3, the backends of every VIP.
func (s *soak) victim() *netlab.Backend { return s.lp.lab.Backends[s.rng.IntN(3)] }

func (s *soak) killBackend() func() {
	b := s.victim()
	return s.deadBackend("kill backend", b, func() { b.StopServers(true) }, func() {
		if err := b.StartServers(); err != nil {
			s.t.Fatalf("restart %s's servers: %v", b.Name, err)
		}
	})
}

func (s *soak) blackholeBackend() func() {
	b := s.victim()
	return s.deadBackend("blackhole backend", b, func() {
		nft(s.t, b.Host, "add", "table", "inet", "soakhole")
		nft(s.t, b.Host, "add", "chain", "inet", "soakhole", "in", "{ type filter hook input priority 0 ; }")
		nft(s.t, b.Host, "add", "rule", "inet", "soakhole", "in", "tcp", "dport", "{ 7, 80 }", "drop")
	}, func() { nft(s.t, b.Host, "delete", "table", "inet", "soakhole") })
}

// deadBackend kills b with inject and watches the VIP packets that reach
// it until the hold ends: the last one must come within soakDetect.
func (s *soak) deadBackend(kind string, b *netlab.Backend, inject, restore func()) func() {
	end := s.open(kind)
	dead := s.dead(b.Name, kind)
	last := vipPackets(s.t, b)
	t0 := time.Now()
	inject()
	lastChange, until := t0, t0.Add(s.holdFor())
	tick := time.NewTicker(50 * time.Millisecond)
	for now := range tick.C {
		if n := vipPackets(s.t, b); n != last {
			last, lastChange = n, now
		}
		if now.After(until) {
			break
		}
	}
	tick.Stop()
	reach := lastChange.Sub(t0)
	s.mu.Lock()
	s.reach = max(s.reach, reach)
	s.mu.Unlock()
	if reach > soakDetect {
		s.violate("%s %s: VIP traffic still reached it %v after it died (bound %v)", kind, b.Name, reach, soakDetect)
	}
	restore()
	return func() { dead(); end() }
}

// master is the index of the node that says it is master.
func (s *soak) master() int { return s.lp.master(s.t) }

func (s *soak) killMaster() func() {
	m := s.master()
	end := s.open("kill -9 master daemon")
	s.lp.nodes[m].kill9(s.t)
	time.Sleep(s.holdFor()) // the fault lasts this long
	s.lp.restart(s.t, m)
	return end
}

func (s *soak) flapMaster() func() {
	m := s.master()
	end := s.open("flap master link")
	if err := s.lp.hosts[m].SetLinkUp(false); err != nil {
		s.t.Fatal(err)
	}
	time.Sleep(s.holdFor()) // the fault lasts this long
	if err := s.lp.hosts[m].SetLinkUp(true); err != nil {
		s.t.Fatal(err)
	}
	return end
}

func (s *soak) backupRoundTrip() func() {
	n := s.lp.nodes[s.master()]
	end := s.open("backup save and restore")
	f := filepath.Join(s.t.TempDir(), "soak-backup.json")
	n.mustCLI(s.t, "backup", "save", f)
	n.mustCLI(s.t, "backup", "restore", f)
	return end
}

// drainChurn undrains the drained backend, or drains one if none is.
func (s *soak) drainChurn() func() {
	n := s.lp.nodes[s.master()]
	end := s.open("drain or undrain")
	for addr, d := range s.drained {
		if d {
			n.mustCLI(s.t, "backend", "undrain", vipTCP, addr)
			s.drained[addr] = false
			return end
		}
	}
	addr := s.victim().Addr.Addr().String()
	n.mustCLI(s.t, "backend", "drain", vipTCP, addr)
	s.drained[addr] = true
	return end
}

// addDelChurn adds b4 to vipTCP and vipHTTP, or deletes it from both.
func (s *soak) addDelChurn() func() {
	n := s.lp.nodes[s.master()]
	end := s.open("add or delete b4")
	b4 := s.lp.lab.Backends[3].Addr.Addr().String()
	if s.b4In {
		dead := s.dead("b4", "deleted")
		for _, v := range []string{vipTCP, vipHTTP} {
			n.mustCLI(s.t, "backend", "del", v, b4)
		}
		s.b4In = false
		return func() { dead(); end() }
	}
	for _, v := range []string{vipTCP, vipHTTP} {
		n.mustCLI(s.t, append([]string{"backend", "add", v, b4}, fastCheck...)...)
	}
	s.b4In = true
	return end
}

func (s *soak) spoofBurst() func() {
	m := s.master()
	end := s.open("spoofed advert burst")
	sent := spoofAdverts(s.t, s.lp.lab.Client, s.lp.hosts[m].Addr.Addr(), s.lp.hosts[1-m].Addr.Addr(), 255, 20_000, time.Second)
	if a, b := s.lp.nodes[m].ha(s.t).Role, s.lp.nodes[1-m].ha(s.t).Role; a != "master" || b != "backup" {
		s.violate("after %d spoofed adverts the roles are %s/%s, want master/backup", sent, a, b)
	}
	return end
}

// recover waits until the pair is whole: one master, a synced backup
// that hears it at the same revision, and both nodes showing the
// expected backends, all up.
func (s *soak) recover(kind string) {
	want := s.expected()
	deadline := time.Now().Add(20 * time.Second)
	for {
		a, b := s.lp.nodes[0].ha(s.t), s.lp.nodes[1].ha(s.t)
		if whole(a, b) || whole(b, a) {
			sa, sb := signature(s.lp.nodes[0].status(s.t)), signature(s.lp.nodes[1].status(s.t))
			if sa == want && sb == want {
				s.lp.sameRings(s.t)
				return
			}
			if time.Now().After(deadline) {
				s.violate("after %s the nodes show\n  %s\n  %s\nwant %s", kind, sa, sb, want)
				return
			}
		} else if time.Now().After(deadline) {
			s.violate("after %s the pair is not whole: %+v / %+v", kind, a, b)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// whole says m is master and b a backup that hears it, synced, at the
// same revision.
func whole(m, b api.HAStatus) bool {
	return m.Role == "master" && b.Role == "backup" && b.Synced && len(b.Peers) == 1 && b.Peers[0].Up &&
		len(m.Peers) == 1 && m.Peers[0].Up && m.Revision == b.Revision && !m.DualMaster
}

// countVIPPackets counts, at b's interface and before anything else
// there, the packets to the VIP address that reach b (inner packets: the
// decap program runs before).
func countVIPPackets(t testing.TB, b *netlab.Backend) {
	nft(t, b.Host, "add", "table", "netdev", "soak")
	nft(t, b.Host, "add", "chain", "netdev", "soak", "in", fmt.Sprintf(`{ type filter hook ingress device "%s" priority -500 ; }`, b.Link))
	nft(t, b.Host, "add", "rule", "netdev", "soak", "in", "ip", "daddr", netlab.LabVIP4.String(), "counter")
}

var nftPackets = regexp.MustCompile(`counter packets (\d+)`)

func vipPackets(t testing.TB, b *netlab.Backend) uint64 {
	out, err := b.Command(context.Background(), "nft", "list", "chain", "netdev", "soak", "in").CombinedOutput()
	m := nftPackets.FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("read %s's VIP packet counter: %v\n%s", b.Name, err, out)
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return n
}
