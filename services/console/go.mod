module github.com/vigil-cc/vigil/services/console

go 1.26.0
