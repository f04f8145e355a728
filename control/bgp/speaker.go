package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	gapi "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	gbgp "github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
)

// Speaker is the embedded BGP speaker: it dials every configured router
// (nothing listens on port 179) and holds the routes Set asks for.
type Speaker struct {
	cfg Config
	log *slog.Logger
	srv *server.BgpServer

	mu        sync.Mutex
	announced map[netip.Prefix]bool // routes in the RIB
	tagged    bool                  // announced with GRACEFUL_SHUTDOWN
}

// NewSpeaker starts the speaker and adds its peers; cfg must have been
// completed. Stop releases it.
func NewSpeaker(ctx context.Context, cfg Config, log *slog.Logger) (*Speaker, error) {
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	glog := slog.New(warnOnly{log.Handler()}).With("component", "gobgp")
	s := &Speaker{cfg: cfg, log: log.With("component", "bgp"), announced: map[netip.Prefix]bool{},
		srv: server.NewBgpServer(server.LoggerOption(glog, lvl))}
	go s.srv.Serve()
	g := &gapi.Global{Asn: cfg.ASN, RouterId: cfg.RouterID.String(), ListenPort: -1}
	if cfg.BFD {
		g.BindToDevice = cfg.Iface // the BFD socket: only this interface
	}
	if err := s.srv.StartBgp(ctx, &gapi.StartBgpRequest{Global: g}); err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("bgp: start speaker (asn %d, router id %s): %w", cfg.ASN, cfg.RouterID, err)
	}
	if err := s.policies(ctx); err != nil {
		s.srv.Stop()
		return nil, err
	}
	if err := s.srv.WatchEvent(ctx, server.WatchEventMessageCallbacks{OnPeerUpdate: s.onPeer}, server.WatchPeer()); err != nil {
		s.srv.Stop()
		return nil, fmt.Errorf("bgp: watch peers: %w", err)
	}
	for _, p := range cfg.Peers {
		if err := s.srv.AddPeer(ctx, &gapi.AddPeerRequest{Peer: s.peerConf(p)}); err != nil {
			s.srv.Stop()
			return nil, fmt.Errorf("bgp: --bgp-peer %s: %w", p, err)
		}
	}
	return s, nil
}

// policies make the speaker a stub that only originates: it imports
// nothing its routers send (so nothing they send is ever re-advertised,
// and the LB is never transit between two routers), and exports only
// the routes it originates.
func (s *Speaker) policies(ctx context.Context) error {
	const own = "sluice-own-routes"
	if err := s.srv.AddPolicy(ctx, &gapi.AddPolicyRequest{Policy: &gapi.Policy{Name: own, Statements: []*gapi.Statement{{
		Name:       own + "-local",
		Conditions: &gapi.Conditions{RouteType: gapi.Conditions_ROUTE_TYPE_LOCAL},
		Actions:    &gapi.Actions{RouteAction: gapi.RouteAction_ROUTE_ACTION_ACCEPT},
	}}}}); err != nil {
		return fmt.Errorf("bgp: export policy: %w", err)
	}
	for _, a := range []*gapi.PolicyAssignment{
		// The global RIB's import policy sees this speaker's own routes
		// too: they are accepted, and nothing else.
		{Name: "global", Direction: gapi.PolicyDirection_POLICY_DIRECTION_IMPORT, Policies: []*gapi.Policy{{Name: own}},
			DefaultAction: gapi.RouteAction_ROUTE_ACTION_REJECT},
		{Name: "global", Direction: gapi.PolicyDirection_POLICY_DIRECTION_EXPORT, Policies: []*gapi.Policy{{Name: own}},
			DefaultAction: gapi.RouteAction_ROUTE_ACTION_REJECT},
	} {
		if err := s.srv.SetPolicyAssignment(ctx, &gapi.SetPolicyAssignmentRequest{Assignment: a}); err != nil {
			return fmt.Errorf("bgp: %s policy: %w", strings.ToLower(strings.TrimPrefix(a.Direction.String(), "POLICY_DIRECTION_")), err)
		}
	}
	return nil
}

func (s *Speaker) peerConf(p Peer) *gapi.Peer {
	hold := uint64(s.cfg.Hold / time.Second)
	fam := func(afi gapi.Family_Afi) *gapi.AfiSafi {
		f := &gapi.Family{Afi: afi, Safi: gapi.Family_SAFI_UNICAST}
		// A router that sends more than MaxPrefixes routes of a family
		// (all refused on import, but held in its Adj-RIB-In) has its
		// session shut down, so that a full table cannot fill memory.
		return &gapi.AfiSafi{Config: &gapi.AfiSafiConfig{Family: f, Enabled: true},
			PrefixLimits: &gapi.PrefixLimit{Family: f, MaxPrefixes: s.cfg.MaxPrefixes, ShutdownThresholdPct: 80}}
	}
	c := &gapi.Peer{
		Conf:      &gapi.PeerConf{NeighborAddress: p.Addr.Addr().String(), PeerAsn: p.ASN, AuthPassword: s.cfg.Password},
		Transport: &gapi.Transport{RemotePort: uint32(p.Addr.Port())},
		// A lost session is tried again after a second, not 120 s.
		Timers:   &gapi.Timers{Config: &gapi.TimersConfig{HoldTime: hold, KeepaliveInterval: max(hold/3, 1), ConnectRetry: 1, IdleHoldTimeAfterReset: 1}},
		AfiSafis: []*gapi.AfiSafi{fam(gapi.Family_AFI_IP), fam(gapi.Family_AFI_IP6)},
	}
	if s.cfg.BFD {
		us := uint32(s.cfg.BFDInterval / time.Microsecond)
		c.Bfd = &gapi.BfdPeerConfig{Enabled: true, DesiredMinimumTxInterval: us, RequiredMinimumReceive: us, DetectionMultiplier: uint32(s.cfg.BFDMultiplier)}
	}
	return c
}

func (s *Speaker) onPeer(e *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if e.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := e.Peer.State
	args := []any{"peer", st.NeighborAddress, "asn", st.PeerASN, "state", sessionState(st.SessionState)}
	if st.DisconnectMessage != "" {
		args = append(args, "reason", st.DisconnectMessage)
	}
	s.log.Info("bgp peer state", args...)
}

func sessionState(s gbgp.FSMState) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "BGP_FSM_"))
}

// Set makes routes the announced set; tagged adds GRACEFUL_SHUTDOWN to
// every route (a change of tag announces every route again).
func (s *Speaker) Set(routes []netip.Prefix, tagged bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := map[netip.Prefix]bool{}
	var add, del []*apiutil.Path
	for _, r := range routes {
		want[r] = true
		if !s.announced[r] || tagged != s.tagged {
			p, err := s.path(r, tagged)
			if err != nil {
				return err
			}
			add = append(add, p)
		}
	}
	for r := range s.announced {
		if !want[r] {
			p, err := s.path(r, s.tagged)
			if err != nil {
				return err
			}
			del = append(del, p)
		}
	}
	if len(del) > 0 {
		if err := s.srv.DeletePath(apiutil.DeletePathRequest{Paths: del}); err != nil {
			return fmt.Errorf("bgp: withdraw %d routes: %w", len(del), err)
		}
		for _, p := range del {
			delete(s.announced, p.Nlri.(*gbgp.IPAddrPrefix).Prefix)
		}
	}
	if len(add) > 0 {
		res, err := s.srv.AddPath(apiutil.AddPathRequest{Paths: add})
		if err == nil {
			for _, r := range res {
				err = errors.Join(err, r.Error)
			}
		}
		if err != nil {
			return fmt.Errorf("bgp: announce %d routes: %w", len(add), err)
		}
		for _, p := range add {
			s.announced[p.Nlri.(*gbgp.IPAddrPrefix).Prefix] = true
		}
	}
	s.tagged = tagged
	return nil
}

// path is the route r, next hop self (or the configured next hop).
func (s *Speaker) path(r netip.Prefix, tagged bool) (*apiutil.Path, error) {
	nlri, err := gbgp.NewIPAddrPrefix(r)
	if err != nil {
		return nil, fmt.Errorf("bgp: route %s: %w", r, err)
	}
	attrs := []gbgp.PathAttributeInterface{gbgp.NewPathAttributeOrigin(gbgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	fam := gbgp.RF_IPv4_UC
	if r.Addr().Is4() {
		nh := s.cfg.NextHop
		if !nh.IsValid() {
			nh = netip.IPv4Unspecified() // GoBGP puts the session's own address
		}
		a, err := gbgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	} else {
		fam = gbgp.RF_IPv6_UC
		nh := s.cfg.NextHop6
		if !nh.IsValid() {
			nh = netip.IPv6Unspecified()
		}
		a, err := gbgp.NewPathAttributeMpReachNLRI(fam, []gbgp.PathNLRI{{NLRI: nlri}}, nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	}
	comms := slices.Clone(s.cfg.Communities)
	if tagged {
		comms = append(comms, GracefulShutdown)
	}
	if len(comms) > 0 {
		attrs = append(attrs, gbgp.NewPathAttributeCommunities(comms))
	}
	return &apiutil.Path{Family: fam, Nlri: nlri, Attrs: attrs}, nil
}

// PeerStatus is one router as bgp status shows it.
type PeerStatus struct {
	Addr   string `json:"addr"`
	ASN    uint32 `json:"asn"`
	State  string `json:"state"`
	Uptime string `json:"uptime"`
	BFD    string `json:"bfd"`
	// AdjOut is how many routes this node has sent the router.
	AdjOut int `json:"adj_out"`
}

// Peers reports every router's session.
func (s *Speaker) Peers(ctx context.Context) ([]PeerStatus, error) {
	var out []PeerStatus
	err := s.srv.ListPeer(ctx, &gapi.ListPeerRequest{EnableAdvertised: true}, func(p *gapi.Peer) {
		ps := PeerStatus{Addr: p.GetConf().GetNeighborAddress(), ASN: p.GetConf().GetPeerAsn(), BFD: "off"}
		st := p.GetState()
		ps.State = strings.ToLower(strings.TrimPrefix(st.GetSessionState().String(), "SESSION_STATE_"))
		if up := p.GetTimers().GetState().GetUptime(); up != nil && st.GetSessionState() == gapi.PeerState_SESSION_STATE_ESTABLISHED {
			ps.Uptime = time.Since(up.AsTime()).Round(time.Millisecond).String()
		}
		if s.cfg.BFD {
			ps.BFD = "down"
			if st.GetBfdState().GetSessionState() == gapi.BfdSessionState_BFD_SESSION_STATE_UP {
				ps.BFD = "up"
			}
		}
		for _, a := range p.GetAfiSafis() {
			ps.AdjOut += int(a.GetState().GetAdvertised())
		}
		out = append(out, ps)
	})
	if err != nil {
		return nil, fmt.Errorf("bgp: list peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerStatus) int { return strings.Compare(a.Addr, b.Addr) })
	return out, nil
}

// Sent waits until every established session has sent what Set left in
// the RIB (its Adj-RIB-Out holds exactly the announced routes), or ctx
// ends.
func (s *Speaker) Sent(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.announced)
		s.mu.Unlock()
		ps, err := s.Peers(ctx)
		if err != nil {
			return err
		}
		done := true
		for _, p := range ps {
			if p.State == "established" && p.AdjOut != n {
				done = false
			}
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bgp: routers still hold withdrawn routes: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// Announced lists the routes in the RIB.
func (s *Speaker) Announced() []netip.Prefix {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]netip.Prefix, 0, len(s.announced))
	for r := range s.announced {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	return out
}

// Stop closes every session (a Cease to each router) and the speaker.
func (s *Speaker) Stop() { s.srv.Stop() }

// warnOnly passes on GoBGP's warnings and errors; its per-peer chatter
// is logged by onPeer instead.
type warnOnly struct{ slog.Handler }

func (w warnOnly) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn && w.Handler.Enabled(ctx, l)
}
func (w warnOnly) WithAttrs(as []slog.Attr) slog.Handler { return warnOnly{w.Handler.WithAttrs(as)} }
func (w warnOnly) WithGroup(n string) slog.Handler       { return warnOnly{w.Handler.WithGroup(n)} }
