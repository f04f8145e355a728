package control

import (
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/sluicelb/sluice/control/bgp"
)

// drainingRoutes announces nothing but takes as long to withdraw as a
// BGP speaker with the given bound.
type drainingRoutes struct {
	noRoutes
	bound time.Duration
}

func (r drainingRoutes) WithdrawBound() time.Duration { return r.bound }

// TestStopFitsTheUnit: the longest stop, with BGP at the default drain,
// fits in dist/sluice.service's TimeoutStopSec (before: 10 s against a
// worst case of 11 s and more), and a node without BGP stops sooner.
func TestStopFitsTheUnit(t *testing.T) {
	raw, err := os.ReadFile("../dist/sluice.service")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^TimeoutStopSec=(\d+)$`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("dist/sluice.service sets no TimeoutStopSec in seconds")
	}
	secs, _ := strconv.Atoi(string(m[1]))
	unit := time.Duration(secs) * time.Second
	withBGP := (&Daemon{routes: drainingRoutes{bound: bgp.WithdrawBound(bgp.DefaultDrain)}}).stopBound()
	alone := (&Daemon{routes: noRoutes{}}).stopBound()
	if withBGP > unit || alone >= withBGP {
		t.Fatalf("stop bound %v with BGP, %v without; the unit waits %v", withBGP, alone, unit)
	}
	t.Logf("stop bound %v with BGP (default drain), %v without; TimeoutStopSec %v", withBGP, alone, unit)
}
