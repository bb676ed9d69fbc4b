module github.com/vigil-cc/vigil/services/agent

go 1.26

require github.com/vigil-cc/vigil/pkg v0.0.0

replace github.com/vigil-cc/vigil/pkg => ../../pkg
