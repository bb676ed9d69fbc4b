package keyguard_test

import (
	"fmt"
	"reflect"
	"time"
)

// diffFields describes how got differs from want, field by field: one
// indented line per differing field, "" when none does. Both are structs
// of one type with exported fields; times compare with Equal.
func diffFields[T any](got, want T) string {
	g, w := reflect.ValueOf(got), reflect.ValueOf(want)
	d := ""
	for i := range g.NumField() {
		gf, wf := g.Field(i).Interface(), w.Field(i).Interface()
		if gt, ok := gf.(time.Time); ok && gt.Equal(wf.(time.Time)) {
			continue
		}
		if !reflect.DeepEqual(gf, wf) {
			d += fmt.Sprintf("\n\t%s: got %#v, want %#v", g.Type().Field(i).Name, gf, wf)
		}
	}
	return d
}
