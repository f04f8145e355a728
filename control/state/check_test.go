package state

import "testing"

func TestParseCodes(t *testing.T) {
	for _, good := range []string{"", "200", "200,204", "200-399", "200-299,404"} {
		if err := ParseCodes(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"abc", "99", "300-200", "200-", "700"} {
		if err := ParseCodes(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TestSettingsValidate (health's until the model owned check timing):
// the defaults pass; a zero interval, timeout, rise or fall is refused.
func TestSettingsValidate(t *testing.T) {
	if err := (Check{Interval: Duration(DefaultInterval), Timeout: Duration(DefaultTimeout), Rise: DefaultRise, Fall: DefaultFall}).validateTiming(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []Check{
		{Timeout: 1, Rise: 1, Fall: 1},
		{Interval: 1, Rise: 1, Fall: 1},
		{Interval: 1, Timeout: 1, Fall: 1},
		{Interval: 1, Timeout: 1, Rise: 1},
	} {
		if err := s.validateTiming(); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
}
