import pprint
from flask import Flask, request, jsonify
 
app = Flask(__name__)
 
@app.route('/', methods=['POST'])
def auth():
        # API 서버로부터 TokenReview 수신
        tokenReview = request.json

        # 인증 결과 (하드코딩)
        status = {}
        status['authenticated'] = True
        status['user'] = {
                'username': 'testUser',
                'uid': 'testUser',
                'groups': ['system:masters'] 
                 # group 설정을 'system:masters'로 설정하면 해당 user에게 관리자 권한을 부여함
                 # group 설정을 공백 or 설정하지 않으면 해당 username과 동일한 rolebinding 권한을 부여함
        }
 
        # TokenReview에 인증결과 객체 삽입
        tokenReview['status'] = status

        # 출력
        pprint.pprint(tokenReview)
 
        # API 서버로 json 응답
        return jsonify(tokenReview)
 
 
if __name__ == '__main__':
        app.run(host= '0.0.0.0', port=6000, debug=True)
