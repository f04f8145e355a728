package pair

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// announceAt is when gratuitous ARPs and unsolicited neighbour
// advertisements are sent after taking over: a burst at once, repeated
// for clients and switches that missed it.
var announceAt = []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond, time.Second, 5 * time.Second}

// announceBurst is how many copies each announcement sends.
const announceBurst = 3

// vipOwner puts the VIP addresses on the interface of the master, so that
// its kernel answers ARP and ND for them, announces them on takeover, and
// takes them off again on the backup. The XDP program forwards on both
// nodes regardless.
type vipOwner struct {
	ifi *net.Interface
	log *slog.Logger

	mu       sync.Mutex
	owned    map[netip.Addr]bool
	announce context.CancelFunc
}

func newVIPOwner(ifi *net.Interface, log *slog.Logger) *vipOwner {
	return &vipOwner{ifi: ifi, log: log, owned: map[netip.Addr]bool{}}
}

func addrPrefix(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// set makes want the VIP addresses this node holds on the interface:
// missing ones are added (and, with announce, announced), ones it added
// before and no longer wants are removed. stale names addresses a previous
// run may have left; they are removed unless wanted.
func (o *vipOwner) set(ctx context.Context, want []netip.Addr, stale []netip.Addr, announce bool) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	link, err := netlink.LinkByIndex(o.ifi.Index)
	if err != nil {
		return fmt.Errorf("vip addresses on %s: %w", o.ifi.Name, err)
	}
	wanted := map[netip.Addr]bool{}
	var errs []error
	var added []netip.Addr
	for _, a := range want {
		wanted[a] = true
		if o.owned[a] {
			continue
		}
		na := &netlink.Addr{IPNet: addrPrefix(a)}
		if a.Is6() {
			na.Flags = unix.IFA_F_NODAD
		}
		if err := netlink.AddrReplace(link, na); err != nil {
			errs = append(errs, fmt.Errorf("add vip address %s to %s: %w", a, o.ifi.Name, err))
			continue
		}
		o.owned[a] = true
		added = append(added, a)
	}
	drop := map[netip.Addr]bool{}
	for a := range o.owned {
		if !wanted[a] {
			drop[a] = true
		}
	}
	for _, a := range stale {
		if !wanted[a] {
			drop[a] = true
		}
	}
	for a := range drop {
		err := netlink.AddrDel(link, &netlink.Addr{IPNet: addrPrefix(a)})
		if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove vip address %s from %s: %w", a, o.ifi.Name, err))
			continue
		}
		delete(o.owned, a)
	}
	if announce && len(added) > 0 {
		// A new schedule replaces the running one, so it covers every
		// address held, not only the new ones.
		o.startAnnounceLocked(ctx, o.ownedLocked())
	}
	if len(o.owned) == 0 && o.announce != nil {
		o.announce()
		o.announce = nil
	}
	return errors.Join(errs...)
}

// reannounce announces every owned address again (a healed partition:
// clients may have followed the other master).
func (o *vipOwner) reannounce(ctx context.Context) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.owned) > 0 {
		o.startAnnounceLocked(ctx, o.ownedLocked())
	}
}

// ownedLocked lists the addresses this node holds.
func (o *vipOwner) ownedLocked() []netip.Addr {
	all := make([]netip.Addr, 0, len(o.owned))
	for a := range o.owned {
		all = append(all, a)
	}
	return all
}

func (o *vipOwner) startAnnounceLocked(ctx context.Context, addrs []netip.Addr) {
	if o.announce != nil {
		o.announce()
	}
	actx, cancel := context.WithCancel(ctx)
	o.announce = cancel
	go func() {
		start := time.Now()
		for _, at := range announceAt {
			select {
			case <-actx.Done():
				return
			case <-time.After(time.Until(start.Add(at))):
			}
			if err := o.sendAnnouncements(addrs); err != nil {
				o.log.Warn("announce vip addresses", "err", err)
			}
		}
	}()
}

// sendAnnouncements sends gratuitous ARP requests (sender = target = VIP)
// to broadcast and unsolicited, overriding neighbour advertisements to
// all-nodes.
func (o *vipOwner) sendAnnouncements(addrs []netip.Addr) error {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	var errs []error
	if len(v4) > 0 {
		errs = append(errs, o.garp(v4))
	}
	if len(v6) > 0 {
		errs = append(errs, o.unsolicitedNA(v6))
	}
	return errors.Join(errs...)
}

func (o *vipOwner) garp(addrs []netip.Addr) error {
	pc, err := packet.Listen(o.ifi, packet.Raw, int(ethernet.EtherTypeARP), nil)
	if err != nil {
		return fmt.Errorf("gratuitous arp on %s: %w", o.ifi.Name, err)
	}
	defer pc.Close()
	for _, a := range addrs {
		p, err := arp.NewPacket(arp.OperationRequest, o.ifi.HardwareAddr, a, ethernet.Broadcast, a)
		if err != nil {
			return fmt.Errorf("gratuitous arp for %s: %w", a, err)
		}
		pb, err := p.MarshalBinary()
		if err != nil {
			return err
		}
		f := &ethernet.Frame{Destination: ethernet.Broadcast, Source: o.ifi.HardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
		fb, err := f.MarshalBinary()
		if err != nil {
			return err
		}
		for range announceBurst {
			if _, err := pc.WriteTo(fb, &packet.Addr{HardwareAddr: ethernet.Broadcast}); err != nil {
				return fmt.Errorf("gratuitous arp for %s on %s: %w", a, o.ifi.Name, err)
			}
		}
	}
	return nil
}

// unsolicitedNA sends each advertisement from the VIP itself: it was added
// without duplicate address detection, so it is usable at once, where the
// link-local address may still be tentative after the link came up.
func (o *vipOwner) unsolicitedNA(addrs []netip.Addr) error {
	for _, a := range addrs {
		if err := o.advertise(a); err != nil {
			return err
		}
	}
	return nil
}

func (o *vipOwner) advertise(a netip.Addr) error {
	c, _, err := ndp.Listen(o.ifi, ndp.Addr(a.String()))
	if err != nil {
		return fmt.Errorf("neighbour advertisement for %s on %s: %w", a, o.ifi.Name, err)
	}
	defer c.Close()
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: a,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: o.ifi.HardwareAddr}}}
	for range announceBurst {
		if err := c.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes()); err != nil {
			return fmt.Errorf("neighbour advertisement for %s on %s: %w", a, o.ifi.Name, err)
		}
	}
	return nil
}
