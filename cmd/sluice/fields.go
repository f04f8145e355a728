package main

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/sluicelb/sluice/control/state"
	"github.com/urfave/cli/v2"
)

// flagFor names the flag of `vip add` or `backend add` that sets a
// field of the model ("" if none does).
func flagFor(field string) string {
	switch field {
	case "check.type":
		return "check"
	case "check.interval", "check.timeout", "check.fastinter", "check.rise", "check.fall":
		return strings.TrimPrefix(field, "check.")
	case "check.on_error":
		return "on-error"
	case "check.service, tls":
		return "check-service, --check-tls"
	case "addr", "vip":
		return ""
	}
	return strings.NewReplacer(".", "-", "_", "-").Replace(field)
}

// flagError names the flag behind a model field error: the model has
// the rule, the CLI the names its user typed.
func flagError(err error) error {
	var fe *state.FieldError
	if !errors.As(err, &fe) || fe.At != "" {
		return err
	}
	flag := flagFor(fe.Field)
	if flag == "" {
		return err
	}
	msg := "--" + flag
	if fe.Value != "" {
		msg += " " + fe.Value
	}
	return errors.New(msg + ": " + fe.Reason)
}

// zeroGiven refuses a flag given as 0 whose field reads 0 as "unset":
// the model would fill in the default, which is not what was typed.
func zeroGiven(c *cli.Context, names ...string) error {
	for _, n := range names {
		if v := c.Value(n); c.IsSet(n) && reflect.ValueOf(v).IsZero() {
			return fmt.Errorf("--%s %v: must be positive (leave it out for the default)", n, v)
		}
	}
	return nil
}
