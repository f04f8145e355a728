package capture

import (
	"testing"
	"time"

	"github.com/sluicelb/sluice/loader/internal/layout"
)

func TestParseCaptureRecBounds(t *testing.T) {
	if _, _, err := parseRec(make([]byte, 10), time.Now()); err == nil {
		t.Error("a short record accepted")
	}
	raw := make([]byte, 36+SnapMax)
	raw[8], raw[12] = 10, 20 // len 10, caplen 20
	if _, _, err := parseRec(raw, time.Now()); err == nil {
		t.Error("caplen over len accepted")
	}
}

func TestCaptureFilterRefusesBadInput(t *testing.T) {
	for _, f := range []Filter{
		{VIPID: 1},
		{VIPID: 1, RX: true, Snaplen: uint32(SnapMax) + 1},
		{VIPID: 1, RX: true, Backend: layout.MaxBackends},
	} {
		if err := f.check(); err == nil {
			t.Errorf("%+v accepted", f)
		}
	}
}
