package canonjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"testing"
)

func TestTransform(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "rfc8785 example",
			in: `{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}`,
			want: `{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`,
		},
		{
			name: "rfc8785 sorting by utf-16",
			in: `{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One",` +
				`"\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}`,
			want: "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\"," +
				"\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}",
		},
		{name: "nested", in: ` { "b" : [ 1 , { "d":2, "c" : 3 } ] , "a" : {} , "e":[]} `, want: `{"a":{},"b":[1,{"c":3,"d":2}],"e":[]}`},
		{name: "numbers", in: `[-0, 0.0, 1e21, 1e20, 123e-7, 1.5e-7, -1.25, 100, 9007199254740993]`,
			want: `[0,0,1e+21,100000000000000000000,0.0000123,1.5e-7,-1.25,100,9007199254740992]`},
		{name: "html not escaped", in: `"<a>&\u2028"`, want: "\"<a>&\u2028\""},
		{name: "scalar", in: `true`, want: `true`},
		{name: "many members", in: `{"t":1,"s":2,"r":3,"q":4,"p":5,"o":6,"n":7,"m":8,"l":9,"k":10,"j":11,"i":12,"h":13,"g":14,"f":15,"e":16,"d":17,"c":18,"b":19,"a":20}`,
			want: `{"a":20,"b":19,"c":18,"d":17,"e":16,"f":15,"g":14,"h":13,"i":12,"j":11,"k":10,"l":9,"m":8,"n":7,"o":6,"p":5,"q":4,"r":3,"s":2,"t":1}`},
		{name: "long names sharing a prefix", in: `{"abcdefghij2":1,"abcdefghij10":2,"abcdefgh":3,"b\u0041":4,"bA0":5}`,
			want: `{"abcdefgh":3,"abcdefghij10":2,"abcdefghij2":1,"bA":4,"bA0":5}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Transform([]byte(tt.in))
			if err != nil {
				t.Fatalf("Transform: %v", err)
			}
			if string(got) != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestTransformRejects(t *testing.T) {
	for _, in := range []string{
		``, `{`, `{"a":1,"a":2}`, `[1,]`, `{"a" 1}`, `01`, `1.`, `-`, `1e400`, `"\ud800"`, `"\udc00\ud800"`,
		"\"a\x01\"", "\"\xff\"", `nul`, `[1] x`, `"\q"`, `{"a":1}}`,
		`{"a":1,"\u0061":2}`, "\"abcdefghijklmn\x1fopq\"", "\"abcdefghijklmn\xffopq\"", `"abcdefghijklmnop"q"`,
		`{"t":1,"s":2,"r":3,"q":4,"p":5,"o":6,"n":7,"m":8,"l":9,"k":10,"j":11,"i":12,"h":13,"g":14,"f":15,"e":16,"d":17,"t":18}`,
	} {
		if _, err := Transform([]byte(in)); !errors.Is(err, ErrInvalid) {
			t.Errorf("Transform(%q) = %v, want ErrInvalid", in, err)
		}
	}
	deep := make([]byte, 0, 2*MaxDepth+2)
	for range MaxDepth + 1 {
		deep = append(deep, '[')
	}
	for range MaxDepth + 1 {
		deep = append(deep, ']')
	}
	if _, err := Transform(deep); !errors.Is(err, ErrInvalid) {
		t.Errorf("deep nesting: %v, want ErrInvalid", err)
	}
}

func TestAppendNumberRoundTrips(t *testing.T) {
	for _, f := range []float64{1, -1, 0.1, 1e-7, 5e-324, math.MaxFloat64, 123456789012345680000, 1e21 - 65536} {
		b := AppendNumber(nil, f)
		var back float64
		if err := json.Unmarshal(b, &back); err != nil || back != f {
			t.Errorf("AppendNumber(%v) = %s, round trip %v, %v", f, b, back, err)
		}
	}
}

// FuzzTransform checks that canonical output is valid JSON with the same
// meaning as the input, and that canonicalizing is idempotent.
func FuzzTransform(f *testing.F) {
	for _, s := range []string{`{"b":1,"a":[true,null,"x\n"]}`, `"\u20ac"`, `[1e30,-0.5]`, `{"\ud83d\ude00":{}}`, `{"z\u005a":"\u0059","a":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Transform(in)
		if err != nil {
			return
		}
		var a, b any
		if err := json.Unmarshal(in, &a); err != nil {
			t.Fatalf("accepted input encoding/json rejects: %v", err)
		}
		if err := json.Unmarshal(out, &b); err != nil {
			t.Fatalf("output is not JSON: %v: %s", err, out)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("meaning changed:\n in %s\nout %s", in, out)
		}
		again, err := Transform(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("not idempotent: %s -> %s (%v)", out, again, err)
		}
	})
}

func TestAppendTransformVisitsTopLevelMembers(t *testing.T) {
	var got []string
	out, err := AppendTransform([]byte("x"), []byte(`{"b":{"c":1},"a\u0041":"v","d":[ 1 ]}`), func(name, value []byte) {
		got = append(got, string(name)+"="+string(value))
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `x{"aA":"v","b":{"c":1},"d":[1]}` {
		t.Fatalf("out %s", out)
	}
	if want := `[b={"c":1} aA="v" d=[1]]`; fmt.Sprint(got) != want {
		t.Fatalf("visited %v, want %s", got, want)
	}
}

// TestEscapedNameBeforeEscapedValue checks that a member name decoded from
// escapes survives the decoding of an escaped string value after it.
func TestEscapedNameBeforeEscapedValue(t *testing.T) {
	var got []string
	out, err := AppendTransform(nil, []byte(`{"z\u005a":"\u0059\u0059\u0059","a\u00e9":"\u00e8","b":1}`), func(name, value []byte) {
		got = append(got, string(name)+"="+string(value))
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"aé":"è","b":1,"zZ":"YYY"}` {
		t.Fatalf("out %s", out)
	}
	if want := `[zZ="YYY" aé="è" b=1]`; fmt.Sprint(got) != want {
		t.Fatalf("visited %v, want %s", got, want)
	}
}
